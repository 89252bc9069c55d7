// The message box. Enter sends, Shift+Enter breaks the line; while a message is on its way (and
// while the tab follows as many answers as it can at once) the box is read-only and Send is
// disabled. While answers stream, the next message can be sent: it waits for them (queued).
// Cancel appears once there is an answer to cancel.

// The counter shows once a message is this close to the server's limit (and says by how much a
// longer one is over it, which the server would refuse).
const COUNTER_FROM = 0.9;

export class Composer {
  #form;
  #input;
  #send;
  #cancel;
  #counter;
  #busy = false;
  #enabled = false;
  #maxChars = null; // the server's MAX_MESSAGE_CHARS, once known

  constructor(form, { onSend, onCancel }) {
    this.#form = form;
    this.#input = form.querySelector('textarea');
    this.#send = form.querySelector('#send');
    this.#cancel = form.querySelector('#cancel');
    this.#counter = form.querySelector('#message-counter');

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = this.#input.value;
      if (!this.#busy && !this.#send.disabled && text.trim()) onSend(text);
    });
    this.#input.addEventListener('input', () => this.#count());
    this.#input.addEventListener('keydown', (event) => {
      // isComposing: the Enter that confirms an input-method candidate must not send.
      if (event.key !== 'Enter' || event.shiftKey || event.isComposing) return;
      event.preventDefault();
      form.requestSubmit();
    });
    this.#cancel.addEventListener('click', () => onCancel());
  }

  /**
   * enabled: a project is open and the user is signed in; busy: a message is being sent, or the
   * tab follows as many answers as it can; cancellable: there is a running answer that Cancel
   * would stop.
   */
  setState({ enabled, busy, cancellable }) {
    this.#busy = busy;
    this.#enabled = enabled;
    const hadFocus = this.#form.contains(document.activeElement);
    this.#input.disabled = !enabled;
    this.#input.readOnly = busy;
    this.#send.disabled = !enabled || busy || this.#over > 0;
    this.#form.setAttribute('aria-busy', String(busy));
    this.#cancel.hidden = !cancellable;
    // Hiding a focused Cancel (or disabling Send) would drop keyboard focus on <body>.
    if (hadFocus && !this.#form.contains(document.activeElement) && enabled) this.focus();
  }

  get text() {
    return this.#input.value;
  }

  clear() {
    this.#input.value = '';
    this.#count();
  }

  /** The server's longest message, in characters (code points, as the server counts them). */
  set maxChars(limit) {
    this.#maxChars = Number.isInteger(limit) && limit > 0 ? limit : null;
    this.#count();
  }

  /** How many characters the message is over the limit (0 when it is not, or none is known). */
  get #over() {
    if (this.#maxChars === null) return 0;
    return Math.max(0, this.#length - this.#maxChars);
  }

  get #length() {
    let length = 0;
    for (const _ of this.#input.value) length += 1; // code points, like the server
    return length;
  }

  #count() {
    const limit = this.#maxChars;
    const length = limit === null ? 0 : this.#length;
    const over = Math.max(0, length - (limit ?? 0));
    const near = limit !== null && length >= limit * COUNTER_FROM;
    this.#counter.hidden = !near;
    this.#counter.dataset.state = over > 0 ? 'over' : 'near';
    if (near) {
      const count = (n) => n.toLocaleString('en-US');
      this.#counter.textContent =
        over > 0
          ? `${count(over)} characters too long: the limit is ${count(limit)}.`
          : `${count(length)} / ${count(limit)} characters`;
    }
    this.#send.disabled = !this.#enabled || this.#busy || over > 0;
  }

  focus() {
    this.#input.focus();
  }
}
