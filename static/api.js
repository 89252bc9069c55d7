// The JSON API client: the one module that knows the server's paths, sends the session cookie
// and turns RFC 9457 problem documents into ApiError.

/** A failed request: the problem document's fields, or status 0 when the server was unreachable. */
export class ApiError extends Error {
  constructor({ status, code, title, detail, retryAfter = null, members = {} }) {
    super(detail || title || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.title = title;
    this.detail = detail;
    this.retryAfter = retryAfter;
    this.members = members; // the whole problem document, for codes that carry more
  }
}

/**
 * Fires `reachable` / `unreachable` after each request, so the connection indicator can say
 * "offline" when the server is down even though the browser believes it is online.
 */
export const network = new EventTarget();

// An answer sent while another of the project is still being written (from another tab, say)
// waits for it, so that it is written with that answer in its context, in the order typed.
const ON_RUNNING = 'enqueue';

const segment = encodeURIComponent;
const projectPath = (projectId) => `/api/projects/${segment(projectId)}`;
const messagePath = (projectId, messageId) =>
  `${projectPath(projectId)}/messages/${segment(messageId)}`;

/** Reads a problem document from a failed response; tolerates a proxy's HTML error page. */
export async function problemFrom(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // Not JSON: keep the HTTP status as the only information.
  }
  return new ApiError({
    status: response.status,
    code: problem.code ?? `http_${response.status}`,
    title: problem.title ?? response.statusText,
    detail: problem.detail ?? problem.title ?? `The request failed (HTTP ${response.status}).`,
    retryAfter: response.headers.get('Retry-After'),
    members: problem,
  });
}

const unreachable = () =>
  new ApiError({
    status: 0,
    code: 'network_error',
    title: 'Network error',
    detail: 'The server could not be reached.',
  });

async function send(method, path, body) {
  const init = {
    method,
    credentials: 'same-origin', // the HttpOnly session cookie; the browser adds Origin itself
    cache: 'no-store', // history and statuses change under us: never answer from the HTTP cache
    headers: { Accept: 'application/json' },
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    network.dispatchEvent(new Event('unreachable'));
    throw unreachable();
  }
  network.dispatchEvent(new Event('reachable'));
  if (!response.ok) throw await problemFrom(response);
  return response.status === 204 ? null : response.json();
}

export const api = {
  /**
   * Without `replace`, a browser signed in to another account gets 409
   * another_account_signed_in (naming both) and stays as it is: send `replace` only once the
   * person has said so.
   */
  signIn: (token, { replace = false } = {}) =>
    send('POST', '/api/session', replace ? { token, replace: true } : { token }),
  whoAmI: () => send('GET', '/api/session'),
  signOut: () => send('DELETE', '/api/session'),

  listProjects: () => send('GET', '/api/projects'),
  getProject: (projectId) => send('GET', projectPath(projectId)),
  createProject: (title) => send('POST', '/api/projects', { title }),
  /** The project with its new title (the same rules as at creation). */
  renameProject: (projectId, title) => send('PATCH', projectPath(projectId), { title }),
  /** Its running answers end cancelled, then it is gone with everything in it (204). */
  deleteProject: (projectId) => send('DELETE', projectPath(projectId)),
  /** The server's longest message (MAX_MESSAGE_CHARS), from its OpenAPI document. */
  async maxMessageChars() {
    const document = await send('GET', '/openapi.json');
    return document.components.schemas.GenerateRequest.properties.message.maxLength ?? null;
  },

  /**
   * One page of history, ascending by sequence; `before` pages towards older messages, `after`
   * towards newer ones.
   */
  listMessages(projectId, { limit = 50, before, after } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before !== undefined) query.set('before', String(before));
    if (after !== undefined) query.set('after', String(after));
    return send('GET', `${projectPath(projectId)}/messages?${query}`);
  },
  getMessage: (projectId, messageId) => send('GET', messagePath(projectId, messageId)),
  cancel: (projectId, messageId) => send('POST', `${messagePath(projectId, messageId)}/cancel`),

  /**
   * A new answer (the next variant) for the question of the project's latest answer (202,
   * without listening); 409 not_latest_answer for an earlier one.
   */
  regenerate: (projectId, messageId, clientRequestId) =>
    send('POST', `${messagePath(projectId, messageId)}/regenerate`, {
      client_request_id: clientRequestId,
      on_running: ON_RUNNING,
    }),
  /** The answers of a message's sequence, `{variants: [Message], current}`. */
  variants: (projectId, messageId) => send('GET', `${messagePath(projectId, messageId)}/variants`),
  /** Makes this variant of the latest answer the current one; answers as `variants`. */
  chooseVariant: (projectId, messageId) =>
    send('POST', `${messagePath(projectId, messageId)}/current`),

  /** Starts a generation without listening (202); used when the text is too long for a URL. */
  startGeneration: (projectId, message, clientRequestId) =>
    send('POST', `${projectPath(projectId)}/generations`, {
      message,
      client_request_id: clientRequestId,
      on_running: ON_RUNNING,
    }),
  /**
   * Sends the results of an answer's tool calls as the next turn (202, without listening): the
   * server takes them only while that answer is the project's latest (409
   * tool_calls_not_pending otherwise: another tab answered first).
   */
  sendToolResults: (projectId, results, clientRequestId) =>
    send('POST', `${projectPath(projectId)}/generations`, {
      tool_results: results,
      client_request_id: clientRequestId,
      on_running: ON_RUNNING,
    }),
};

/** URLs for EventSource, which can only GET and cannot set headers. */
export const streamUrls = {
  generate(projectId, message, clientRequestId) {
    const query = new URLSearchParams({
      projectId,
      message,
      clientRequestId,
      onRunning: ON_RUNNING,
    });
    return `/api/generate-stream?${query}`;
  },
  events(projectId, messageId, lastEventId = 0) {
    const resume = lastEventId > 0 ? `?lastEventId=${lastEventId}` : '';
    return `${messagePath(projectId, messageId)}/events${resume}`;
  },
};

/**
 * EventSource reports a refused stream (401, 404, 422, 429, 503...) as a bare `error` Event with
 * no status. Repeating the GET with fetch recovers the problem document. That is safe for
 * generate-stream because its clientRequestId makes the repeat idempotent. Returns the ApiError,
 * or null when the stream opens fine this time (the caller may then simply try again).
 */
export async function explainStreamFailure(url) {
  const controller = new AbortController();
  try {
    const response = await fetch(url, {
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { Accept: 'text/event-stream' },
      signal: controller.signal,
    });
    network.dispatchEvent(new Event('reachable'));
    return response.ok ? null : await problemFrom(response);
  } catch {
    network.dispatchEvent(new Event('unreachable'));
    return unreachable();
  } finally {
    controller.abort(); // a successful probe is a live stream: hang up, the real listener follows
  }
}

/**
 * Asks whether the server answers at all: GET /healthz, given up after `timeoutMs` (a server that
 * hangs keeps its connections open without answering). A failure, a timeout or any status but
 * 200 (a proxy's 502 for a server that is gone) is `unreachable`. Resolves to true or false.
 */
export async function probeServer(timeoutMs) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let answered = false;
  try {
    const response = await fetch('/healthz', {
      cache: 'no-store',
      credentials: 'omit', // it needs no session
      signal: controller.signal,
    });
    answered = response.ok;
  } catch {
    // Unreachable, or aborted after timeoutMs.
  } finally {
    clearTimeout(timer);
  }
  network.dispatchEvent(new Event(answered ? 'reachable' : 'unreachable'));
  return answered;
}

/** A clientRequestId; crypto.randomUUID exists only in secure contexts (not plain-http LAN). */
export function newRequestId() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}
