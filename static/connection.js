// The #connection indicator. Its data-state is 'offline' while the browser has no network or the
// server did not answer the last request, 'reconnecting' while any stream is being retried, and
// 'live' otherwise.

const LABELS = { live: 'live', reconnecting: 'reconnecting…', offline: 'offline' };

export class ConnectionIndicator {
  #element;
  #streams = new Map(); // stream key -> its last reported state
  #serverReachable = true;

  constructor(element, network) {
    this.#element = element;
    network.addEventListener('reachable', () => this.#setReachable(true));
    network.addEventListener('unreachable', () => this.#setReachable(false));
    window.addEventListener('offline', () => this.#render());
    // Back online: assume the server is reachable until a request says otherwise.
    window.addEventListener('online', () => this.#setReachable(true));
    this.#render();
  }

  /** Records a stream's state (from followStream's onState); `key` is any per-stream object. */
  track(key, state) {
    if (state === 'closed') this.#streams.delete(key);
    else this.#streams.set(key, state);
    // A stream that opened proves the server answers, whatever an earlier fetch said.
    if (state === 'live') this.#serverReachable = true;
    this.#render();
  }

  #setReachable(reachable) {
    this.#serverReachable = reachable;
    this.#render();
  }

  get state() {
    if (!navigator.onLine || !this.#serverReachable) return 'offline';
    for (const state of this.#streams.values()) if (state === 'reconnecting') return 'reconnecting';
    return 'live';
  }

  #render() {
    const state = this.state;
    if (this.#element.dataset.state === state && this.#element.textContent) return;
    this.#element.dataset.state = state;
    this.#element.textContent = LABELS[state];
  }
}
