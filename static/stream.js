// One answer's Server-Sent Events stream: named events parsed from JSON, each applied once,
// and a clean hang-up after the terminal event.

export const TERMINAL_EVENTS = new Set(['done', 'error', 'cancelled']);
const EVENT_NAMES = [
  'start',
  'progress',
  'reasoning',
  'delta',
  'tool_call',
  'done',
  'error',
  'cancelled',
];

/**
 * Opens `url` with EventSource and reports through callbacks:
 *   onEvent(name, data, id) for each event, in order, at most once per id;
 *   onState(state) with 'connecting' | 'live' | 'reconnecting' | 'closed';
 *   onFailure() when the browser gave up before a terminal event (an HTTP error status or a
 *   wrong content type: EventSource does not retry those, so the caller decides what next).
 * `lastEventId` is the id already applied when this stream resumes an earlier one.
 */
export function followStream(url, { lastEventId = 0, onEvent, onState, onFailure }) {
  const source = new EventSource(url); // same origin: the session cookie goes along
  let lastId = lastEventId;
  let finished = false;

  const finish = () => {
    if (finished) return;
    finished = true;
    source.close(); // without this, EventSource would reconnect after the server hangs up
    onState('closed');
  };

  const apply = (name, event) => {
    if (finished) return;
    // When the server closes a stream early, EventSource reconnects by itself with Last-Event-ID
    // and the server resumes after it. The id check keeps that exactly-once even if a server or
    // a re-attach replays events we have already applied.
    const id = Number(event.lastEventId);
    if (Number.isInteger(id) && id > 0) {
      if (id <= lastId) return;
      lastId = id;
    }
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      console.warn(`orderly: ignoring a ${name} event whose data is not JSON`, event.data);
      return;
    }
    onEvent(name, data, id);
    if (TERMINAL_EVENTS.has(name)) finish();
  };

  for (const name of EVENT_NAMES) {
    if (name !== 'error') source.addEventListener(name, (event) => apply(name, event));
  }

  // One name, two meanings: the server's named `error` event is a MessageEvent carrying data;
  // the browser's connection-problem notice is a plain Event without any.
  source.addEventListener('error', (event) => {
    if (event instanceof MessageEvent && typeof event.data === 'string') {
      apply('error', event);
    } else if (finished) {
      // Already hung up on purpose; nothing to report.
    } else if (source.readyState === EventSource.CLOSED) {
      finish();
      onFailure();
    } else {
      onState('reconnecting'); // the browser retries on its own, sending Last-Event-ID
    }
  });
  source.addEventListener('open', () => {
    if (!finished) onState('live');
  });

  onState('connecting');
  return {
    /** The highest event id applied so far: where a replacement stream should resume. */
    get lastEventId() {
      return lastId;
    },
    close: finish,
  };
}
