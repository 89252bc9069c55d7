// Keeps every running answer attached to its event stream: through EventSource's own reconnects,
// through refused connections (retried with a growing pause), and from the generate request to
// the `start` event that names the answer.

import { api, explainStreamFailure, streamUrls } from './api.js';
import { followStream } from './stream.js';
import { isActive } from './view.js';

// Longer messages are sent by POST and then attached to: proxies commonly refuse request lines
// over 8 KiB, and a GET URL is all EventSource can send.
const MAX_STREAM_URL = 8000;
const MAX_OPEN_ATTEMPTS = 3;
// The answers one tab follows at once. Each holds a connection, and over HTTP/1.1 a browser opens
// at most 6 to a server: past that, its other requests (and other tabs') would wait for them.
const MAX_OPEN_ANSWERS = 3;
const retryDelay = (attempt) => Math.min(30_000, 500 * 2 ** attempt);
// 429 too_many_streams_per_user: this user holds as many streams on the server as it allows
// (other tabs, other devices). Nothing is wrong with the answer: wait as told, then try again.
const TOO_MANY_STREAMS = 'too_many_streams_per_user';
const DEFAULT_RETRY_AFTER = 5;
// Tool results refused because another tab (or an earlier try) answered the calls first.
const TOOL_RESULTS_TAKEN = ['tool_calls_not_pending', 'idempotency_key_reused'];

/** The wait a 429 asks for, in milliseconds (its Retry-After seconds). */
function waitFor(problem) {
  const seconds = Number(problem.retryAfter);
  return (Number.isFinite(seconds) && seconds > 0 ? seconds : DEFAULT_RETRY_AFTER) * 1000;
}

/** The problem, said with what the page does about it (it retries by itself). */
function waiting(problem, what) {
  const seconds = Math.ceil(waitFor(problem) / 1000);
  return {
    status: problem.status,
    code: problem.code,
    title: problem.title,
    detail: `${problem.detail} ${what} in ${seconds} s.`,
    retryAfter: null, // said above: the page itself tries again
  };
}

/**
 * `listener` receives: started() once the server has the user's message; event(messageId, name,
 * data) for every stream event; finished(message) for an answer found finished while recovering;
 * changed() when blocked or runningIds may have changed; report(problem) for failures;
 * resolved(code) when a problem reported with that code has gone (a refused stream opened).
 */
export class AnswerStreams {
  #connection;
  #listener;
  #epoch = 0; // bumped by closeAll: callbacks of an older epoch are dropped
  #sending = null; // the generate request until `start` names the assistant message
  #running = new Map(); // assistant message id -> { close(), retryNow?() }
  #waitingForRoom = new Set(); // answers (null: the message being sent) refused for a 429

  constructor(connection, listener) {
    this.#connection = connection;
    this.#listener = listener;
  }

  /**
   * The next message must wait: one is on its way (until `start` names its answer), or this tab
   * follows as many answers as it can at once.
   */
  get blocked() {
    return this.#sending !== null || this.#running.size >= MAX_OPEN_ANSWERS;
  }

  get runningIds() {
    return [...this.#running.keys()];
  }

  isRunning(messageId) {
    return this.#running.has(messageId);
  }

  closeAll() {
    this.#epoch += 1;
    if (this.#waitingForRoom.size > 0) {
      this.#waitingForRoom.clear();
      this.#listener.resolved?.(TOO_MANY_STREAMS); // nothing waits for room any more
    }
    this.#sending?.close();
    this.#sending = null;
    for (const handle of this.#running.values()) handle.close();
    this.#running.clear();
    this.#listener.changed();
  }

  /** The answer is over (or no longer ours to follow): hang up its stream. */
  settle(messageId) {
    this.#running.get(messageId)?.close();
    this.#running.delete(messageId);
    this.#opened(messageId); // if it waited for room, it waits no more
    this.#listener.changed();
  }

  /** After the network returns, retry refused streams now rather than after their pause. */
  retryNow() {
    for (const handle of this.#running.values()) handle.retryNow?.();
  }

  /** Sends a user message; the answer's events follow through the listener. */
  start(projectId, text, clientRequestId) {
    const url = streamUrls.generate(projectId, text, clientRequestId);
    if (url.length > MAX_STREAM_URL) this.#post(projectId, [text, clientRequestId]);
    else this.#generate(projectId, url, 0);
  }

  /**
   * Follows an assistant message's events. From lastEventId 0 the server replays the whole
   * stream: `start` empties the content and every delta is appended again, so the result has no
   * repeated and no missing text. A later lastEventId continues where a broken stream stopped.
   */
  follow(projectId, messageId, lastEventId = 0, attempt = 0) {
    const epoch = this.#epoch;
    const key = {};
    const stream = followStream(streamUrls.events(projectId, messageId, lastEventId), {
      lastEventId,
      onState: (state) => {
        this.#connection.track(key, state);
        if (state === 'live' && epoch === this.#epoch) this.#opened(messageId);
      },
      onEvent: (name, data) => this.#listener.event(messageId, name, data),
      onFailure: () => {
        if (epoch !== this.#epoch) return;
        const progressed = stream.lastEventId > lastEventId;
        this.#refused(projectId, messageId, stream.lastEventId, progressed ? 0 : attempt + 1);
      },
    });
    this.#running.set(messageId, stream);
    this.#listener.changed();
  }

  #generate(projectId, url, attempt) {
    const epoch = this.#epoch;
    const key = {};
    let messageId = null;
    const stream = followStream(url, {
      onState: (state) => {
        this.#connection.track(key, state);
        if (state === 'live' && epoch === this.#epoch) this.#opened(null);
      },
      onEvent: (name, data) => {
        if (name === 'start') {
          messageId = data.assistant_message.id;
          this.#sending = null;
          this.#running.get(messageId)?.close(); // a repeated request may name a followed answer
          this.#running.set(messageId, stream);
          this.#listener.started();
          this.#listener.changed(); // now there is an answer to cancel
        }
        if (messageId) this.#listener.event(messageId, name, data);
      },
      onFailure: () => {
        if (epoch !== this.#epoch) return;
        if (messageId) this.#recover(projectId, messageId, stream.lastEventId, 0);
        else this.#explainRefusal(projectId, url, attempt, epoch);
      },
    });
    this.#sending = stream;
    this.#listener.changed();
  }

  /** The server refused the generate stream before `start`: find out why and say so. */
  async #explainRefusal(projectId, url, attempt, epoch) {
    const problem = await explainStreamFailure(url);
    if (epoch !== this.#epoch) return;
    if (problem?.code === TOO_MANY_STREAMS) {
      // Nothing was reserved; the same clientRequestId sends it once, whenever it goes through.
      this.#waitingForRoom.add(null);
      this.#listener.report(waiting(problem, 'Your message is sent by itself'));
      const timer = setTimeout(() => this.#generate(projectId, url, attempt), waitFor(problem));
      this.#sending = { close: () => clearTimeout(timer) };
      return;
    }
    if (!problem && attempt + 1 < MAX_OPEN_ATTEMPTS) {
      // It opens now (a server that was restarting, say); the same clientRequestId resumes it.
      const retry = () => this.#generate(projectId, url, attempt + 1);
      const timer = setTimeout(retry, retryDelay(attempt));
      this.#sending = { close: () => clearTimeout(timer) };
      return;
    }
    this.#sending = null;
    this.#listener.changed();
    this.#listener.report(
      problem ?? { code: 'stream_failed', detail: 'The answer stream could not be opened.' },
    );
  }

  /**
   * Sends the results of tool calls the page ran (the next turn) and follows its answer. A
   * refusal because the calls were answered already (by another tab) is nobody's problem: that
   * tab's exchange shows up with the others'.
   */
  answerTools(projectId, results, clientRequestId) {
    const send = () => api.sendToolResults(projectId, results, clientRequestId);
    this.#post(projectId, send, { quiet: TOOL_RESULTS_TAKEN });
  }

  /** A new answer for the latest answer's question; its events follow like a sent message's. */
  regenerate(projectId, messageId, clientRequestId) {
    this.#post(projectId, () => api.regenerate(projectId, messageId, clientRequestId));
  }

  async #post(projectId, request, { quiet = [] } = {}) {
    const epoch = this.#epoch;
    const fromComposer = typeof request !== 'function';
    this.#sending = { close() {} }; // nothing to hang up, but the composer must wait
    this.#listener.changed();
    try {
      const started = fromComposer
        ? await api.startGeneration(projectId, ...request)
        : await request();
      if (epoch !== this.#epoch) return;
      this.#sending = null;
      if (fromComposer) this.#listener.started();
      else this.#listener.changed();
      this.#listener.event(started.assistant_message.id, 'start', started);
      this.follow(projectId, started.assistant_message.id);
    } catch (problem) {
      if (epoch !== this.#epoch) return;
      this.#sending = null;
      this.#listener.changed();
      if (!quiet.includes(problem.code)) this.#listener.report(problem);
    }
  }

  /**
   * EventSource gave up on an answer's stream: it treats every HTTP error as final and says
   * nothing of which. Ask with fetch. A 429 for this user's open streams is said, and the stream
   * tried again after its Retry-After; anything else is recovered with a growing pause.
   */
  async #refused(projectId, messageId, lastEventId, attempt) {
    const epoch = this.#epoch;
    const asking = { close() {} };
    this.#running.set(messageId, asking);
    const problem = await explainStreamFailure(streamUrls.events(projectId, messageId, lastEventId));
    if (epoch !== this.#epoch || this.#running.get(messageId) !== asking) return;
    if (problem?.code === TOO_MANY_STREAMS) {
      this.#waitingForRoom.add(messageId);
      this.#listener.report(waiting(problem, 'This answer resumes by itself'));
      this.#recover(projectId, messageId, lastEventId, attempt, waitFor(problem));
    } else {
      this.#recover(projectId, messageId, lastEventId, attempt);
    }
  }

  /** A stream opened (or its answer ended): its wait for room (429) is over; once no stream
   * waits any more, the problem reported for it has gone. */
  #opened(messageId) {
    if (!this.#waitingForRoom.delete(messageId)) return;
    if (this.#waitingForRoom.size === 0) this.#listener.resolved?.(TOO_MANY_STREAMS);
  }

  /**
   * A stream was refused mid-answer (e.g. 503 while a server drains). Ask for the message after
   * a pause (`delay`, or one that grows with `attempt`): if it has finished, show it; if it still
   * runs, attach again.
   */
  #recover(projectId, messageId, lastEventId, attempt, delay = retryDelay(attempt)) {
    const epoch = this.#epoch;
    let ran = false;
    const run = async () => {
      clearTimeout(timer);
      if (ran || epoch !== this.#epoch || this.#running.get(messageId) !== handle) return;
      ran = true;
      try {
        const message = await api.getMessage(projectId, messageId);
        if (epoch !== this.#epoch) return;
        // A running message's stored content may be ahead of the events applied here, so only
        // a finished one is taken from the database; a running one is resumed by its events.
        if (isActive(message)) this.follow(projectId, messageId, lastEventId, attempt);
        else this.#listener.finished(message);
      } catch (problem) {
        if (epoch !== this.#epoch) return;
        if (problem.status === 0 || problem.status === 429 || problem.status >= 500) {
          this.#recover(projectId, messageId, lastEventId, attempt + 1);
        } else {
          this.settle(messageId);
          this.#listener.report(problem);
        }
      }
    };
    const timer = setTimeout(run, delay);
    const handle = { close: () => clearTimeout(timer), retryNow: run };
    this.#running.set(messageId, handle);
    this.#listener.changed();
  }
}
