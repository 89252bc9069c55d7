// The #connection indicator. Its data-state is 'offline' while the browser has no network or the
// server did not answer the last request, 'reconnecting' while any stream is being retried, and
// 'live' otherwise.
//
// A page with nothing to ask would never find out that the server went away, and an open stream
// can stay silent on a server that hangs: EventSource hides the stream's `: ping` comments from
// the page, so their absence cannot be timed. So while the tab is visible the server is asked
// every PROBE_EVERY_MS whether it answers at all (GET /healthz, which needs no session or
// database): a server that is gone is noticed within PROBE_EVERY_MS, one that hangs within
// PROBE_EVERY_MS + PROBE_TIMEOUT_MS, and one that is back again as soon.

import { probeServer } from './api.js';

const LABELS = { live: 'live', reconnecting: 'reconnecting…', offline: 'offline' };
const PROBE_EVERY_MS = 5000;
const PROBE_TIMEOUT_MS = 5000;

export class ConnectionIndicator {
  #element;
  #streams = new Map(); // stream key -> its last reported state
  #serverReachable = true;
  #probing = false;

  constructor(element, network) {
    this.#element = element;
    network.addEventListener('reachable', () => this.#setReachable(true));
    network.addEventListener('unreachable', () => this.#setReachable(false));
    window.addEventListener('offline', () => this.#render());
    // Back online: assume the server is reachable until a request says otherwise, and ask it.
    window.addEventListener('online', () => {
      this.#setReachable(true);
      this.#probe();
    });
    // A hidden tab's timers are throttled and nobody looks at it: ask again when it is shown.
    document.addEventListener('visibilitychange', () => this.#probe());
    setInterval(() => this.#probe(), PROBE_EVERY_MS);
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

  async #probe() {
    if (this.#probing || document.hidden || !navigator.onLine) return;
    this.#probing = true;
    try {
      await probeServer(PROBE_TIMEOUT_MS); // its answer comes back as reachable / unreachable
    } finally {
      this.#probing = false;
    }
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
