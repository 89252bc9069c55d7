// Tool calls on the page: an answer's calls as small cards (name, arguments, result), built from
// its `tool_call` events while it streams and from its `tool_calls` once it has ended; and the
// tools this page runs itself (the demo generator's `browser_time`), whose results it sends back.

/** The tools the page answers, by name: each returns the result's text. */
const PAGE_TOOLS = {
  browser_time: () =>
    JSON.stringify({
      time: new Date().toLocaleString(),
      timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
    }),
};

/**
 * The results of `message`'s calls, when it is an answer waiting for them (finish_reason
 * `tool_calls`) and the page runs every tool it called; else null.
 */
export function runPageTools(message) {
  const calls = message.tool_calls;
  if (message.status !== 'success' || message.finish_reason !== 'tool_calls' || !calls?.length) {
    return null;
  }
  if (!calls.every((call) => Object.hasOwn(PAGE_TOOLS, call.name))) return null;
  return calls.map((call) => ({ tool_call_id: call.id, content: PAGE_TOOLS[call.name]() }));
}

/** The cards of one answer's calls, in its element's `.tool-calls` list. */
export class ToolCards {
  #list;
  #cards = new Map(); // index (streaming) or call id -> card element

  constructor(list) {
    this.#list = list;
  }

  /** A `tool_call` event: its first piece makes the card, later ones add to its arguments. */
  add({ index, id, name, arguments: piece }) {
    let card = this.#cards.get(index);
    if (!card) {
      card = this.#card(id, name);
      this.#cards.set(index, card);
    }
    card.querySelector('.tool-arguments').textContent += piece;
  }

  /** The answer's calls as stored: they replace what the events built. */
  set(calls) {
    this.#list.replaceChildren();
    this.#cards.clear();
    (calls ?? []).forEach((call, index) => {
      const card = this.#card(call.id, call.name);
      card.querySelector('.tool-arguments').textContent = call.arguments;
      this.#cards.set(index, card);
    });
  }

  #card(id, name) {
    const card = document.createElement('li');
    card.className = 'tool-card';
    card.dataset.callId = id ?? '';
    const title = card.appendChild(document.createElement('span'));
    title.className = 'tool-name';
    title.textContent = name ?? 'tool';
    card.appendChild(document.createElement('code')).className = 'tool-arguments';
    const result = card.appendChild(document.createElement('div'));
    result.className = 'tool-result';
    result.textContent = 'waiting for its result';
    this.#list.append(card);
    this.#list.hidden = false;
    return card;
  }
}

/** Shows `results` ({tool_call_id, content}) on the cards of the calls they answer in `root`. */
export function showResults(root, results) {
  for (const { tool_call_id: id, content } of results ?? []) {
    for (const card of root.querySelectorAll('.tool-card')) {
      if (card.dataset.callId !== id) continue;
      const result = card.querySelector('.tool-result');
      result.textContent = content;
      result.classList.add('answered');
    }
  }
}
