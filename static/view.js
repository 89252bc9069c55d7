// Rendering. Everything that came from the server is written with textContent or Text nodes,
// except an answer's content, which markdown.js renders as Markdown (escaped, then sanitised).

import { MarkdownContent } from './markdown.js';
import { ToolCards, showResults } from './tools.js';

export const isActive = (message) => message.status === 'pending' || message.status === 'streaming';

const STICKY_PIXELS = 48; // "at the bottom" tolerance, so a streaming answer stays in view
const SCROLL_SLACK = 1; // scrollTop can be fractional: a smaller move is not the person's

/** The conversation: one `.message` element per message, ordered by sequence. */
export class MessageList {
  #list;
  #scroller;
  #template;
  #empty;
  #olderButton;
  #items = new Map(); // message id -> element
  #answers = new WeakMap(); // an assistant message's element -> its MarkdownContent
  // An answer's element -> when this page saw its first reasoning event (performance.now()),
  // until its text starts: then "Thought for N s" (the stored reasoning_ms, once it ends).
  #thinkingSince = new WeakMap();
  #toolCards = new WeakMap(); // an assistant message's element -> its ToolCards
  #results = []; // every tool result shown: a card made later shows its own
  // Following: the bottom (the latest message, growing as its answer streams) is kept in view.
  // It starts when a project opens or the person sends, and stops when they scroll up, away
  // from the bottom; scrolling back down to the bottom starts it again.
  #following = true;
  #lastTop = 0; // the scrollTop last seen: lower now, away from the bottom, is a scroll up

  constructor({ list, scroller, template, empty, olderButton }) {
    this.#list = list;
    this.#scroller = scroller;
    this.#template = template;
    this.#empty = empty;
    this.#olderButton = olderButton;
    scroller.addEventListener('scroll', () => this.#checkFollowing(), { passive: true });
  }

  clear() {
    this.#list.replaceChildren();
    this.#items.clear();
    this.#results = [];
    this.#following = true;
    this.#lastTop = 0;
    this.setHasMore(false);
    this.#empty.hidden = true; // until a page of history says the project is empty
  }

  /** The welcome in place of the conversation: with no project open, or before its first page. */
  showWelcome(shown) {
    this.#empty.hidden = !shown;
  }

  has(messageId) {
    return this.#items.has(messageId);
  }

  sequenceOf(messageId) {
    return Number(this.#items.get(messageId)?.dataset.sequence ?? 0);
  }

  statusOf(messageId) {
    return this.#items.get(messageId)?.dataset.status ?? null;
  }

  /** True when some of the message shows in the scroller's visible part. */
  inView(messageId) {
    const item = this.#items.get(messageId);
    if (!item) return false;
    const shown = this.#scroller.getBoundingClientRect();
    const box = item.getBoundingClientRect();
    return box.bottom > shown.top && box.top < shown.bottom;
  }

  /** `stop(messageId)` runs when the Stop of a running answer is pressed. */
  onStop(stop) {
    this.#list.addEventListener('click', (event) => {
      const button = event.target.closest('button.stop');
      const item = button?.closest('li.message');
      if (!item || button.disabled) return;
      stop(item.dataset.id);
    });
  }

  /** `regenerate(messageId)` runs when the latest answer's Regenerate is pressed. */
  onRegenerate(regenerate) {
    this.#list.addEventListener('click', (event) => {
      const button = event.target.closest('button.regenerate');
      const item = button?.closest('li.message');
      if (item && !button.disabled) regenerate(item.dataset.id);
    });
  }

  /** `step(messageId, by)` runs when an answer's ‹ (by -1) or › (by +1) is pressed. */
  onStepVariant(step) {
    this.#list.addEventListener('click', (event) => {
      const button = event.target.closest('button.prev-variant, button.next-variant');
      const item = button?.closest('li.message');
      if (item && !button.disabled) step(item.dataset.id, button.matches('.prev-variant') ? -1 : 1);
    });
  }

  /** Regenerate and the variant arrows wait while a request of theirs is on its way. */
  setVariantBusy(busy) {
    for (const button of this.#list.querySelectorAll('.regenerate, .variants button')) {
      button.dataset.busy = String(busy);
    }
    this.#syncLatest();
  }

  /** A Stop pressed stays disabled while its cancel is on its way (or until the answer ends). */
  setStopping(messageId, stopping) {
    const button = this.#items.get(messageId)?.querySelector('.stop');
    if (button) button.disabled = stopping;
  }

  /** The sequence of the oldest message shown, or null when none is. */
  get lowestSequence() {
    const oldest = this.#list.firstElementChild;
    return oldest ? Number(oldest.dataset.sequence) : null;
  }

  get highestSequence() {
    const newest = this.#list.lastElementChild;
    return newest ? Number(newest.dataset.sequence) : 0;
  }

  setHasMore(hasMore) {
    this.#olderButton.hidden = !hasMore;
  }

  get nearTop() {
    return this.#scroller.scrollTop < STICKY_PIXELS;
  }

  /** True when the history does not fill the viewport, so no scroll can ask for more. */
  get underfilled() {
    return this.#scroller.scrollHeight <= this.#scroller.clientHeight;
  }

  /** The first page of a project: rendered, then scrolled to the latest message. */
  showLatest(messages) {
    messages.forEach((message) => this.#upsert(message));
    this.#syncEmpty();
    this.followLatest();
  }

  /** Scrolls to the latest message and keeps it in view (the person has just sent one). */
  followLatest() {
    this.#following = true;
    this.#scrollTo(this.#scroller.scrollHeight);
  }

  /** Older history goes above; the reader's position must not jump. */
  prepend(messages) {
    const fromBottom = this.#scroller.scrollHeight - this.#scroller.scrollTop;
    messages.forEach((message) => this.#upsert(message));
    this.#scrollTo(this.#scroller.scrollHeight - fromBottom);
  }

  upsert(message) {
    this.#followingBottom(() => this.#upsert(message));
    this.#syncEmpty();
  }

  /**
   * A piece of the model's reasoning: shown folded above the answer ("Thinking…" while it
   * streams; open on click), never in the answer's text.
   */
  appendReasoning(messageId, text) {
    const item = this.#items.get(messageId);
    if (!item) return;
    this.#markStreaming(item);
    const fold = item.querySelector('.reasoning');
    if (fold.hidden || !this.#thinkingSince.has(item)) {
      this.#thinkingSince.set(item, performance.now());
    }
    this.#followingBottom(() => {
      fold.hidden = false;
      const box = item.querySelector('.reasoning-text');
      const node = box.firstChild ?? box.appendChild(document.createTextNode(''));
      node.appendData(text);
    });
  }

  /** The reasoning is over (its text or a tool call started): say for how long, as seen here. */
  #thought(item) {
    const since = this.#thinkingSince.get(item);
    if (since === undefined) return;
    this.#thinkingSince.delete(item);
    item.querySelector('.reasoning-summary').textContent = thoughtFor(performance.now() - since);
  }

  /** A `tool_call` event of a running answer: a card per call, its arguments as they come. */
  addToolCall(messageId, data) {
    const item = this.#items.get(messageId);
    const cards = item && this.#toolCards.get(item);
    if (!cards) return;
    this.#markStreaming(item);
    this.#thought(item);
    this.#followingBottom(() => cards.add(data));
  }

  appendContent(messageId, text) {
    const item = this.#items.get(messageId);
    if (!item) return;
    this.#markStreaming(item);
    this.#thought(item);
    // Its text is now what shows the answer's progress.
    item.querySelector('.progress-row').hidden = true;
    const answer = this.#answers.get(item);
    if (answer) {
      answer.append(text); // rendered at the next frame, which keeps to the bottom itself
      return;
    }
    this.#followingBottom(() => {
      const content = item.querySelector('.content');
      // One Text node grown in place: cheap for long texts, and never parsed as HTML.
      const node = content.firstChild ?? content.appendChild(document.createTextNode(''));
      node.appendData(text);
    });
  }

  /**
   * A progress event shows what is happening until the answer's text starts: its message (the
   * stage is a word for programs, kept out of sight: "writing" above "Writing the answer" said
   * it twice), and a bar only for a percentage that tells something (above 0, below 100). Once
   * text streams, the text is the progress: a bar stuck at a generator's first estimate said
   * nothing for the whole answer.
   */
  showProgress(messageId, { stage, message, percent }) {
    const item = this.#items.get(messageId);
    if (!item) return;
    // A queued answer stays pending until it starts (the server says so with its next event).
    if (stage !== 'queued') this.#markStreaming(item);
    const row = item.querySelector('.progress-row');
    item.querySelector('.progress-stage').textContent = stage ?? '';
    item.querySelector('.progress-message').textContent = message || stage || '';
    const bar = item.querySelector('progress');
    const telling = typeof percent === 'number' && percent > 0 && percent < 100;
    bar.hidden = !telling;
    if (telling) bar.value = percent;
    row.hidden = this.#hasText(item);
  }

  #hasText(item) {
    const answer = this.#answers.get(item);
    return answer ? answer.source !== '' : item.querySelector('.content').textContent !== '';
  }

  /** The text of a message as written (an answer's Markdown source), for copying. */
  textOf(messageId) {
    const item = this.#items.get(messageId);
    if (!item) return '';
    return this.#answers.get(item)?.source ?? item.querySelector('.content').textContent;
  }

  /** `copy(messageId, button)` runs when a message's "Copy message" is pressed. */
  onCopy(copy) {
    this.#list.addEventListener('click', (event) => {
      const button = event.target.closest('button.copy-message');
      const item = button?.closest('li.message');
      if (item) copy(item.dataset.id, button);
    });
  }

  #upsert(message) {
    let item = this.#items.get(message.id);
    if (!item && message.role === 'assistant') this.#dropOtherVariants(message);
    if (!item) {
      item = this.#template.content.firstElementChild.cloneNode(true);
      this.#items.set(message.id, item);
      if (message.role === 'assistant') {
        const content = item.querySelector('.content');
        const keepBottom = (render) => this.#followingBottom(render);
        this.#answers.set(item, new MarkdownContent(content, keepBottom));
        this.#toolCards.set(item, new ToolCards(item.querySelector('.tool-calls')));
      }
      this.#insert(item, message.sequence);
    }
    fill(item, message, this.#answers.get(item));
    fillReasoning(item, message, this.#thinkingSince);
    // The calls as stored replace those the events built (a replay's `start` empties them).
    const cards = this.#toolCards.get(item);
    if (cards && (message.tool_calls || !isActive(message) || message.status === 'pending')) {
      cards.set(message.tool_calls);
      showResults(item, this.#results);
    }
    if (message.tool_results) {
      this.#results.push(...message.tool_results);
      showResults(this.#list, message.tool_results);
    }
    this.#syncLatest();
  }

  /**
   * One answer per sequence is shown: the one just given (a regenerate's new variant, or the
   * variant chosen with the arrows) takes the place of the one shown before.
   */
  #dropOtherVariants(message) {
    for (const [id, other] of this.#items) {
      if (other.dataset.role === 'assistant' && Number(other.dataset.sequence) === message.sequence) {
        other.remove();
        this.#items.delete(id);
      }
    }
  }

  /**
   * Only the project's latest answer can be regenerated, once it has ended, and only its
   * variants can be switched (later turns were built on an earlier answer's current one).
   */
  #syncLatest() {
    const latest = this.#list.lastElementChild;
    for (const item of this.#list.children) {
      const isLatest = item === latest && item.dataset.role === 'assistant';
      const ended = item.dataset.status !== 'pending' && item.dataset.status !== 'streaming';
      const busy = item.querySelector('.regenerate').dataset.busy === 'true';
      const regenerate = item.querySelector('.regenerate');
      regenerate.hidden = !(isLatest && ended);
      regenerate.disabled = busy;
      const variant = Number(item.dataset.variant);
      const variants = Number(item.dataset.variants);
      item.querySelector('.prev-variant').disabled = busy || !isLatest || variant <= 1;
      item.querySelector('.next-variant').disabled = busy || !isLatest || variant >= variants;
    }
  }

  /** Sequences, not arrival order, decide the position; new messages usually go last. */
  #insert(item, sequence) {
    let before = this.#list.lastElementChild;
    while (before && Number(before.dataset.sequence) > sequence) {
      before = before.previousElementSibling;
    }
    if (before) before.after(item);
    else this.#list.prepend(item);
  }

  // The answer moved past `pending` once the generator reports anything; the stream has no
  // separate event for that transition.
  #markStreaming(item) {
    if (item.dataset.status === 'pending') setStatus(item, 'streaming');
  }

  #followingBottom(change) {
    // Checked before the change too: a scroll the person just made may not have had its event.
    const following = this.#checkFollowing();
    change();
    if (following) this.#scrollTo(this.#scroller.scrollHeight);
  }

  /**
   * Content added below never lowers scrollTop, and content removed only clamps it to the
   * bottom: so a lower scrollTop away from the bottom is the person scrolling up.
   */
  #checkFollowing() {
    const { scrollTop, scrollHeight, clientHeight } = this.#scroller;
    if (scrollHeight - scrollTop - clientHeight < STICKY_PIXELS) this.#following = true;
    else if (scrollTop < this.#lastTop - SCROLL_SLACK) this.#following = false;
    this.#lastTop = scrollTop;
    return this.#following;
  }

  #scrollTo(top) {
    this.#scroller.scrollTop = top;
    this.#lastTop = this.#scroller.scrollTop; // as clamped
  }

  #syncEmpty() {
    this.#empty.hidden = this.#items.size > 0;
  }
}

function setStatus(item, status) {
  item.dataset.status = status;
  item.querySelector('.status').textContent = status;
}

/** One line of a message's details (its menu): the value, or a dash when there is none. */
function detail(item, selector, value) {
  item.querySelector(selector).textContent = value ?? '—';
}

/**
 * Writes a full Message into its element; the content replaces what was shown (rendered as
 * Markdown by `answer` for an assistant message, as plain text for the user's own).
 */
function fill(item, message, answer) {
  const active = isActive(message);
  item.dataset.id = message.id;
  item.dataset.sequence = String(message.sequence);
  item.dataset.role = message.role;
  setStatus(item, message.status);
  // "2 / 3": which of its sequence's answers this is (regenerate makes more).
  item.dataset.variant = String(message.variant ?? 1);
  item.dataset.variants = String(Math.max(message.variants ?? 1, message.variant ?? 1));
  const variants = item.querySelector('.variants');
  variants.hidden = message.role !== 'assistant' || Number(item.dataset.variants) < 2;
  item.querySelector('.variant-label').textContent =
    `${item.dataset.variant} / ${item.dataset.variants}`;
  variants.setAttribute('aria-label', `Answer ${item.dataset.variant} of ${item.dataset.variants}`);
  item.setAttribute('aria-busy', String(active));
  if (answer) answer.set(message.content ?? '');
  else item.querySelector('.content').textContent = message.content ?? '';
  showTime(item.querySelector('.created'), message.created_at);

  // The details a person rarely needs, one click away in the message's menu.
  detail(item, '.sequence', String(message.sequence));
  const usage = message.usage;
  const tokens = usage && `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion`;
  detail(item, '.usage', tokens && `${tokens} tokens`);
  detail(item, '.finish-reason', message.finish_reason);
  detail(item, '.message-id', message.id);
  detail(item, '.request-id', message.client_request_id);
  item.querySelector('.menu').setAttribute('aria-label', `Message ${message.sequence}`);

  // A running answer's progress is unknown until its stream reports (or replays) it; until its
  // text starts, the row says it is on its way.
  const row = item.querySelector('.progress-row');
  row.hidden = !active || Boolean(message.content);
  if (active) {
    item.querySelector('.progress-stage').textContent = '';
    item.querySelector('.progress-message').textContent = '';
    item.querySelector('progress').hidden = true;
  }

  // Every running or queued answer can be stopped on its own, whichever the composer's Cancel
  // would stop.
  const stop = item.querySelector('.stop');
  stop.hidden = !(active && message.role === 'assistant');
  stop.setAttribute('aria-label', `Stop answer #${message.sequence}`);
  if (!active) stop.disabled = false;

  // finish_reason `length`: the model stopped at its limit, so the answer ends mid-way.
  item.querySelector('.cut-short').hidden = message.finish_reason !== 'length';
  item.querySelector('.stopped').hidden = message.status !== 'cancelled';

  const error = item.querySelector('.error');
  error.hidden = message.status !== 'error';
  item.querySelector('.error-code').textContent = message.error?.code ?? '';
  item.querySelector('.error-message').textContent = message.error?.message ?? '';
}

/** "Thought for 3 s": whole seconds, at least 1 (a reasoning under a second is still one). */
function thoughtFor(ms) {
  return `Thought for ${Math.max(1, Math.round(ms / 1000))} s`;
}

/**
 * The reasoning of a full Message (history, a finished answer): folded, its summary saying how
 * long the model thought (the stored `reasoning_ms`), or "Thinking…" while no text has come.
 * Hidden when the model gave none. The fold's open or closed state is the person's: kept.
 */
function fillReasoning(item, message, thinkingSince) {
  const fold = item.querySelector('.reasoning');
  const reasoning = message.reasoning ?? '';
  fold.hidden = reasoning === '';
  item.querySelector('.reasoning-text').textContent = reasoning;
  const summary = item.querySelector('.reasoning-summary');
  if (reasoning === '') {
    thinkingSince.delete(item);
    summary.textContent = 'Thinking…';
  } else if (typeof message.reasoning_ms === 'number') {
    thinkingSince.delete(item);
    summary.textContent = thoughtFor(message.reasoning_ms);
  } else if (isActive(message) && !message.content) {
    summary.textContent = 'Thinking…';
  } else {
    summary.textContent = 'Thought'; // ended by a cancel or the reaper: not timed
  }
}

function showTime(element, timestamp) {
  const date = new Date(timestamp);
  if (!timestamp || Number.isNaN(date.getTime())) return;
  element.dateTime = timestamp;
  element.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  element.title = date.toLocaleString();
}

/** The dismissible problem banner: shows a problem's `detail`. */
export class Banner {
  #element;

  constructor(element) {
    this.#element = element;
    element.querySelector('.banner-dismiss').addEventListener('click', () => this.hide());
  }

  show(problem) {
    const seconds = Number(problem.retryAfter);
    const retry = Number.isInteger(seconds) && seconds > 0 ? ` Try again in ${seconds} s.` : '';
    this.#element.querySelector('.banner-text').textContent =
      (problem.detail || problem.message) + retry;
    this.#element.dataset.code = problem.code ?? '';
    this.#element.hidden = false;
  }

  hide() {
    this.#element.hidden = true;
  }

  /** Hides the banner if it shows a problem with this code (one that has gone away). */
  hideIf(code) {
    if (this.#element.dataset.code === code) this.hide();
  }
}

/** A polite live region for outcomes that sighted users see in place (done, failed...). */
export function announcer(element) {
  return (text) => {
    element.textContent = ''; // so the same sentence twice is announced twice
    setTimeout(() => {
      element.textContent = text;
    }, 50);
  };
}
