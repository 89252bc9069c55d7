// The message box. Enter sends, Shift+Enter breaks the line; while a message is on its way (and
// while the tab follows as many answers as it can at once) the box is read-only and Send is
// disabled. While answers stream, the next message can be sent: it waits for them (queued).
// Cancel appears once there is an answer to cancel.

export class Composer {
  #form;
  #input;
  #send;
  #cancel;
  #busy = false;

  constructor(form, { onSend, onCancel }) {
    this.#form = form;
    this.#input = form.querySelector('textarea');
    this.#send = form.querySelector('#send');
    this.#cancel = form.querySelector('#cancel');

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = this.#input.value;
      if (!this.#busy && !this.#send.disabled && text.trim()) onSend(text);
    });
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
    const hadFocus = this.#form.contains(document.activeElement);
    this.#input.disabled = !enabled;
    this.#input.readOnly = busy;
    this.#send.disabled = !enabled || busy;
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
  }

  focus() {
    this.#input.focus();
  }
}
