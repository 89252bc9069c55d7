// Rendering. Everything that came from the server is written with textContent or Text nodes,
// except an answer's content, which markdown.js renders as Markdown (escaped, then sanitised).

import { MarkdownContent } from './markdown.js';

export const isActive = (message) => message.status === 'pending' || message.status === 'streaming';

const STICKY_PIXELS = 48; // "at the bottom" tolerance, so a streaming answer stays in view

/** The conversation: one `.message` element per message, ordered by sequence. */
export class MessageList {
  #list;
  #scroller;
  #template;
  #empty;
  #olderButton;
  #items = new Map(); // message id -> element
  #answers = new WeakMap(); // an assistant message's element -> its MarkdownContent

  constructor({ list, scroller, template, empty, olderButton }) {
    this.#list = list;
    this.#scroller = scroller;
    this.#template = template;
    this.#empty = empty;
    this.#olderButton = olderButton;
  }

  clear() {
    this.#list.replaceChildren();
    this.#items.clear();
    this.setHasMore(false);
    this.#empty.hidden = true; // until a page of history says the project is empty
  }

  has(messageId) {
    return this.#items.has(messageId);
  }

  sequenceOf(messageId) {
    return Number(this.#items.get(messageId)?.dataset.sequence ?? 0);
  }

  get lowestSequence() {
    return Number(this.#list.firstElementChild?.dataset.sequence);
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
    this.#scroller.scrollTop = this.#scroller.scrollHeight;
  }

  /** Older history goes above; the reader's position must not jump. */
  prepend(messages) {
    const fromBottom = this.#scroller.scrollHeight - this.#scroller.scrollTop;
    messages.forEach((message) => this.#upsert(message));
    this.#scroller.scrollTop = this.#scroller.scrollHeight - fromBottom;
  }

  upsert(message) {
    this.#followingBottom(() => this.#upsert(message));
    this.#syncEmpty();
  }

  appendContent(messageId, text) {
    const item = this.#items.get(messageId);
    if (!item) return;
    this.#markStreaming(item);
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

  showProgress(messageId, { stage, message, percent }) {
    const item = this.#items.get(messageId);
    if (!item) return;
    // A queued answer stays pending until it starts (the server says so with its next event).
    if (stage !== 'queued') this.#markStreaming(item);
    item.querySelector('.progress-stage').textContent = stage ?? '';
    item.querySelector('.progress-message').textContent = message ?? '';
    const bar = item.querySelector('progress');
    if (typeof percent === 'number' && Number.isFinite(percent)) {
      bar.value = Math.min(100, Math.max(0, percent));
    } else {
      bar.removeAttribute('value'); // no value attribute: an indeterminate bar
    }
  }

  #upsert(message) {
    let item = this.#items.get(message.id);
    if (!item) {
      item = this.#template.content.firstElementChild.cloneNode(true);
      this.#items.set(message.id, item);
      if (message.role === 'assistant') {
        const content = item.querySelector('.content');
        const keepBottom = (render) => this.#followingBottom(render);
        this.#answers.set(item, new MarkdownContent(content, keepBottom));
      }
      this.#insert(item, message.sequence);
    }
    fill(item, message, this.#answers.get(item));
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
    const { scrollTop, scrollHeight, clientHeight } = this.#scroller;
    const atBottom = scrollHeight - scrollTop - clientHeight < STICKY_PIXELS;
    change();
    if (atBottom) this.#scroller.scrollTop = this.#scroller.scrollHeight;
  }

  #syncEmpty() {
    this.#empty.hidden = this.#items.size > 0;
  }
}

function setStatus(item, status) {
  item.dataset.status = status;
  item.querySelector('.status').textContent = status;
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
  item.setAttribute('aria-busy', String(active));
  item.querySelector('.role').textContent = message.role;
  item.querySelector('.sequence').textContent = `#${message.sequence}`;
  if (answer) answer.set(message.content ?? '');
  else item.querySelector('.content').textContent = message.content ?? '';
  showTime(item.querySelector('.created'), message.created_at);

  // A running answer's progress is unknown until its stream reports (or replays) it.
  item.querySelector('.progress-row').hidden = !active;
  if (active) {
    item.querySelector('.progress-stage').textContent = '';
    item.querySelector('.progress-message').textContent = '';
    item.querySelector('progress').removeAttribute('value');
  }

  // finish_reason `length`: the model stopped at its limit, so the answer ends mid-way.
  item.querySelector('.cut-short').hidden = message.finish_reason !== 'length';

  const error = item.querySelector('.error');
  error.hidden = message.status !== 'error';
  item.querySelector('.error-code').textContent = message.error?.code ?? '';
  item.querySelector('.error-message').textContent = message.error?.message ?? '';
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
