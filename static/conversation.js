// The open project's conversation: history paging, sending and cancelling, and turning stream
// events into what the message list shows. Keeping streams attached is answers.js's job.

import { AnswerStreams } from './answers.js';
import { api, newRequestId } from './api.js';
import { runPageTools } from './tools.js';
import { isActive } from './view.js';

const PAGE_SIZE = 50;

export class Conversation {
  #messages;
  #composer;
  #announce;
  #report;
  #succeeded;
  #answers;
  #startProject;

  #projectId = null;
  #opening = false; // the open project's first page is on its way: nothing can be sent yet
  #creating = false; // a first message is creating its project
  #epoch = 0; // bumped on every switch: answers to requests of an older epoch are dropped
  #hasMore = false;
  #loadingOlder = false;
  // Every message from the oldest shown one up to this sequence is shown. Other tabs and
  // devices write into the same project: what they add above it is fetched by #catchUp.
  #shownThrough = 0;
  #catchingUp = Promise.resolve();
  // Kept until the server acknowledges the message, so that sending the same text again after
  // a failure reuses its clientRequestId and can never create a second generation.
  #draft = null;

  /**
   * `startProject(text)` creates a project for a first message sent with no project open, opens
   * it, and resolves to its id (or to null, having reported why not).
   */
  /**
   * `succeeded()` runs when something the person did went through (a message reached the
   * server, an answer was stopped): an error shown for an earlier one is over.
   */
  constructor({
    messages,
    composer,
    connection,
    announce,
    report,
    resolved,
    succeeded,
    scroller,
    olderButton,
    startProject,
  }) {
    this.#messages = messages;
    this.#startProject = startProject;
    this.#composer = composer;
    this.#announce = announce;
    this.#report = report;
    this.#succeeded = succeeded;
    this.#answers = new AnswerStreams(connection, {
      started: () => {
        this.#draft = null;
        this.#composer.clear();
        this.#succeeded();
      },
      event: (messageId, name, data) => this.#apply(messageId, name, data),
      finished: (message) => this.#finish(message),
      changed: () => this.#sync(),
      report,
      resolved,
    });
    scroller.addEventListener('scroll', () => this.#messages.nearTop && this.loadOlder(), {
      passive: true,
    });
    olderButton.addEventListener('click', () => this.loadOlder());
    messages.onStop((messageId) => this.cancel(messageId));
    messages.onRegenerate((messageId) => this.regenerate(messageId));
    messages.onStepVariant((messageId, by) => this.stepVariant(messageId, by));
  }

  get projectId() {
    return this.#projectId;
  }

  /** Shows a project's latest messages and attaches to its running answers. Throws ApiError. */
  async open(projectId) {
    this.close();
    this.#messages.showWelcome(false); // until its first page says it is empty
    const epoch = this.#epoch;
    this.#projectId = projectId;
    this.#opening = true;
    this.#sync();
    let page;
    try {
      page = await api.listMessages(projectId, { limit: PAGE_SIZE });
    } catch (problem) {
      if (epoch === this.#epoch) {
        this.#projectId = null;
        this.#opening = false;
        this.#sync();
        this.#messages.showWelcome(true);
      }
      throw problem;
    }
    if (epoch !== this.#epoch) return;
    this.#opening = false;
    this.#shownThrough = page.messages.at(-1)?.sequence ?? 0;
    this.#showPage(page, (messages) => this.#messages.showLatest(messages));
  }

  /** Detaches from everything: streams, pending retries and requests in flight. */
  close() {
    this.#epoch += 1;
    this.#projectId = null;
    this.#opening = false;
    this.#draft = null;
    // The next project's first page says whether it has older messages; until then it has
    // none, or the scroll to the top of the emptied list would page in "before" nothing.
    this.#hasMore = false;
    this.#loadingOlder = false;
    this.#shownThrough = 0;
    this.#messages.clear();
    this.#messages.showWelcome(true); // no project open: what to try
    this.#answers.closeAll(); // also brings the composer up to date
  }

  async loadOlder() {
    if (!this.#hasMore || this.#loadingOlder || !this.#projectId) return;
    const before = this.#messages.lowestSequence;
    if (before === null) return; // nothing shown yet: no page to go before
    this.#loadingOlder = true;
    const epoch = this.#epoch;
    try {
      const page = await api.listMessages(this.#projectId, { limit: PAGE_SIZE, before });
      if (epoch !== this.#epoch) return;
      this.#loadingOlder = false;
      this.#showPage(page, (messages) => this.#messages.prepend(messages));
    } catch (problem) {
      if (epoch !== this.#epoch) return;
      this.#loadingOlder = false;
      this.#report(problem);
    }
  }

  send(text) {
    // While answers stream the next message can go: it is queued behind them (on_running
    // enqueue), up to the answers a tab follows at once.
    if (this.#opening || this.#creating || this.#answers.blocked) return;
    if (!this.#projectId) {
      this.#sendToNewProject(text);
      return;
    }
    if (this.#draft?.text !== text) this.#draft = { text, clientRequestId: newRequestId() };
    // The person wants to see what they sent and its answer, wherever they had scrolled to.
    this.#messages.followLatest();
    this.#answers.start(this.#projectId, text, this.#draft.clientRequestId);
  }

  /** No project is open: the message creates one, titled from it, and is sent there. */
  async #sendToNewProject(text) {
    this.#creating = true;
    this.#sync();
    let projectId = null;
    try {
      projectId = await this.#startProject(text);
    } finally {
      this.#creating = false;
      this.#sync();
    }
    // Unless the user has opened another project meanwhile.
    if (projectId !== null && projectId === this.#projectId) this.send(text);
  }

  /**
   * Cancels an answer: the one whose Stop was pressed, or, for the composer's Cancel, the one
   * the person is watching (#watchedAnswer).
   */
  async cancel(messageId = this.#watchedAnswer()) {
    if (!messageId || !this.#projectId) return;
    const projectId = this.#projectId;
    const epoch = this.#epoch;
    this.#messages.setStopping(messageId, true);
    try {
      const { message } = await api.cancel(projectId, messageId);
      if (epoch === this.#epoch) this.#succeeded();
      // 202 may come before the runner has stopped; the `cancelled` event then finishes it.
      if (epoch === this.#epoch && !isActive(message)) this.#finish(message);
    } catch (problem) {
      if (epoch !== this.#epoch) return;
      this.#messages.setStopping(messageId, false);
      if (problem.status === 409) this.#refresh(projectId, messageId, epoch); // already over
      else this.#report(problem);
    }
  }

  /** Another answer to the latest answer's question: a new variant, streamed in its place. */
  regenerate(messageId) {
    if (!this.#projectId || this.#answers.blocked) return;
    this.#messages.followLatest();
    this.#answers.regenerate(this.#projectId, messageId, newRequestId());
  }

  /** Shows the previous (-1) or next (+1) answer of the latest sequence, and makes it current. */
  async stepVariant(messageId, by) {
    if (!this.#projectId) return;
    const projectId = this.#projectId;
    const epoch = this.#epoch;
    this.#messages.setVariantBusy(true);
    try {
      const { variants } = await api.variants(projectId, messageId);
      const shown = variants.findIndex((variant) => variant.id === messageId);
      const target = variants[shown + by];
      if (!target || epoch !== this.#epoch) return;
      const chosen = await api.chooseVariant(projectId, target.id);
      if (epoch !== this.#epoch) return;
      const current = chosen.variants.find((variant) => variant.variant === chosen.current);
      this.#messages.upsert({ ...current, variants: chosen.variants.length });
      this.#followRunning([current]);
      this.#succeeded();
    } catch (problem) {
      if (epoch === this.#epoch) this.#report(problem);
    } finally {
      if (epoch === this.#epoch) this.#messages.setVariantBusy(false);
    }
  }

  /**
   * The answer being written, never one queued behind it (the newest running answer, which
   * Cancel used to stop, is often queued): the one in view if several are written at once, else
   * the oldest written; failing that, the oldest waiting, which is the next to be written.
   */
  #watchedAnswer() {
    const bySequence = (a, b) => this.#messages.sequenceOf(a) - this.#messages.sequenceOf(b);
    const running = this.#answers.runningIds.sort(bySequence);
    const written = running.filter((id) => this.#messages.statusOf(id) === 'streaming');
    return written.find((id) => this.#messages.inView(id)) ?? written[0] ?? running[0] ?? null;
  }

  retryNow() {
    this.#answers.retryNow();
  }

  #showPage(page, render) {
    this.#hasMore = page.has_more;
    this.#messages.setHasMore(page.has_more);
    render(page.messages);
    this.#followRunning(page.messages);
    this.#sync();
    // Scrolling up is what pages older history in; a page too short to scroll cannot do that.
    if (this.#hasMore && this.#messages.underfilled) this.loadOlder();
  }

  #followRunning(messages) {
    for (const message of messages) {
      const running = message.role === 'assistant' && isActive(message);
      if (running && !this.#answers.isRunning(message.id)) {
        this.#answers.follow(this.#projectId, message.id);
      }
    }
  }

  /**
   * Shows the messages written since #shownThrough that this page has not seen: another tab's
   * exchange, which may even sit below this tab's own latest one. Their running answers are
   * followed. Runs one at a time; a failure is left for the next call to make up for.
   */
  #catchUp() {
    const epoch = this.#epoch;
    this.#catchingUp = this.#catchingUp.then(() => this.#fetchNewer(epoch));
  }

  async #fetchNewer(epoch) {
    try {
      let more = true;
      while (more && epoch === this.#epoch) {
        const after = this.#shownThrough;
        const page = await api.listMessages(this.#projectId, { limit: PAGE_SIZE, after });
        if (epoch !== this.#epoch) return;
        // Those shown already are up to date: their own streams keep them so.
        const unseen = page.messages.filter((message) => !this.#messages.has(message.id));
        unseen.forEach((message) => this.#messages.upsert(message));
        this.#followRunning(unseen);
        this.#shownThrough = page.messages.at(-1)?.sequence ?? after;
        more = page.has_more && page.messages.length > 0;
      }
      this.#sync();
    } catch (problem) {
      if (epoch === this.#epoch && problem.status === 401) this.#report(problem);
    }
  }

  #sync() {
    this.#composer.setState({
      // With no project open the message box works too: its first message starts a project.
      enabled: !this.#opening,
      busy: this.#answers.blocked || this.#creating,
      cancellable: this.#answers.runningIds.length > 0,
    });
  }

  async #refresh(projectId, messageId, epoch) {
    try {
      const message = await api.getMessage(projectId, messageId);
      if (epoch === this.#epoch && !isActive(message)) this.#finish(message);
    } catch (problem) {
      if (epoch === this.#epoch) this.#report(problem);
    }
  }

  #apply(messageId, name, data) {
    switch (name) {
      case 'start':
        // A replay starts here too: forget the shown text, the deltas that follow rebuild it.
        this.#messages.upsert(data.user_message);
        this.#messages.upsert({ ...data.assistant_message, content: '', reasoning: null });
        // Someone else's exchange got the sequences just below this one.
        if (data.user_message.sequence > this.#shownThrough + 1) this.#catchUp();
        break;
      case 'progress':
        this.#messages.showProgress(messageId, data);
        break;
      case 'reasoning':
        this.#messages.appendReasoning(messageId, data.text);
        break;
      case 'delta':
        this.#messages.appendContent(messageId, data.text);
        break;
      case 'tool_call':
        this.#messages.addToolCall(messageId, data);
        break;
      case 'error':
        // The Message normally carries the error too; the event's own copy is the fallback.
        this.#finish({ ...data.message, error: data.message.error ?? data.error });
        break;
      default: // done, cancelled
        this.#finish(data.message);
    }
  }

  /** A finished Message: its stored content is authoritative and never changes again. */
  #finish(message) {
    this.#messages.upsert(message);
    this.#answers.settle(message.id);
    this.#catchUp(); // another tab may have written while this answer ran
    const outcome = { success: 'finished', cancelled: 'cancelled', error: 'failed' }[message.status];
    const code = message.error?.code ? `: ${message.error.code}` : '';
    const cut = message.finish_reason === 'length' ? ', cut short' : '';
    const calls = message.tool_calls?.length ? `, calling ${message.tool_calls.length} tool(s)` : '';
    this.#announce(`Answer #${message.sequence} ${outcome ?? message.status}${code}${cut}${calls}`);
    this.#runTools(message);
  }

  /**
   * An answer this tab watched end with calls of tools the page runs (the demo's browser_time):
   * run them and send their results as the next turn, while it is the latest answer shown. The
   * key is the answer's, so that a repeat (a retry, a second tab) never makes a second turn.
   */
  #runTools(message) {
    if (!this.#projectId || message.project_id !== this.#projectId) return;
    if (message.sequence < this.#messages.highestSequence) return;
    const results = runPageTools(message);
    if (results) this.#answers.answerTools(this.#projectId, results, `tools-${message.id}`);
  }
}
