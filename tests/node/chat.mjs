// The AI SDK (the `ai` package from the npm registry, tests/node/package-lock.json) as a client
// of Orderly's /api/chat. Run by tests/integration/test_ai_sdk.py:
//
//   node chat.mjs SCENARIO BASE_URL TOKEN CHAT_ID
//
// prints one JSON object (what the scenario saw) on stdout; the Python test checks it against
// the server's stored messages. Each scenario uses the SDK's own code: DefaultChatTransport,
// readUIMessageStream and AbstractChat (with the small state object a framework binding, such
// as @ai-sdk/react's, gives it).
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithToolCalls,
  readUIMessageStream,
} from "ai";

const [scenario, base, token, chatId] = process.argv.slice(2);

function transport() {
  return new DefaultChatTransport({
    api: `${base}/api/chat`,
    headers: { Authorization: `Bearer ${token}` },
  });
}

class State {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = [...this.messages, message];
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

class Chat extends AbstractChat {
  constructor(options) {
    super({ ...options, state: new State() });
  }
}

function userMessage(id, text) {
  return { id, role: "user", parts: [{ type: "text", text }] };
}

// Read a UI message stream to its end: the last snapshot of the message.
async function readAll(stream, options = {}) {
  let last = null;
  let snapshots = 0;
  for await (const message of readUIMessageStream({ stream, ...options })) {
    last = message;
    snapshots += 1;
  }
  return { message: last, snapshots };
}

function textOf(message) {
  return message.parts
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");
}

// Every chunk of a stream, as parsed and checked by the SDK (its chunk schema).
async function chunksOf(stream) {
  const chunks = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return chunks;
    chunks.push(value);
  }
}

const scenarios = {
  // Send a message; read the answer with readUIMessageStream.
  async send() {
    const stream = await transport().sendMessages({
      chatId,
      messages: [userMessage("m1", "Hello from the AI SDK")],
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: undefined,
    });
    const { message, snapshots } = await readAll(stream);
    return { message, text: textOf(message), snapshots };
  },

  // Abort mid-answer, reconnect, read to the end; then reconnect again: nothing runs.
  async resume() {
    const controller = new AbortController();
    const stream = await transport().sendMessages({
      chatId,
      messages: [userMessage("m1", "A long one, please")],
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: controller.signal,
    });
    let before = "";
    let messageId = null;
    try {
      for await (const message of readUIMessageStream({ stream })) {
        messageId = message.id;
        before = textOf(message);
        if (before.length > 0) controller.abort();
      }
    } catch (error) {
      if (error.name !== "AbortError") throw error;
    }
    const again = await transport().reconnectToStream({ chatId });
    if (again === null) return { before, messageId, reconnected: null };
    const { message } = await readAll(again);
    const after = await transport().reconnectToStream({ chatId });
    return { before, messageId, reconnected: message, text: textOf(message), after };
  },

  // The chunks of one answer, as the SDK parsed them.
  async chunks() {
    const stream = await transport().sendMessages({
      chatId,
      messages: [userMessage("m1", process.env.PROMPT)],
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: undefined,
    });
    return { chunks: await chunksOf(stream) };
  },

  // A chat: send, then regenerate the answer.
  async regenerate() {
    const chat = new Chat({ id: chatId, transport: transport() });
    await chat.sendMessage({ text: "Say it twice" });
    const first = chat.messages.at(-1);
    await chat.regenerate();
    const second = chat.messages.at(-1);
    return {
      first: { id: first.id, text: textOf(first) },
      second: { id: second.id, text: textOf(second) },
      roles: chat.messages.map((m) => m.role),
      error: chat.error?.message ?? null,
    };
  },

  // A reasoning answer.
  async reasoning() {
    const chat = new Chat({ id: chatId, transport: transport() });
    await chat.sendMessage({ text: "/think about it" });
    const answer = chat.messages.at(-1);
    return { parts: answer.parts, error: chat.error?.message ?? null };
  },

  // A tool call answered on the client (onToolCall + addToolOutput), sent back on its own
  // (sendAutomaticallyWhen); the answer after it continues the same UI message.
  async tool() {
    let chat;
    const calls = [];
    chat = new Chat({
      id: chatId,
      transport: transport(),
      sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
      onToolCall: ({ toolCall }) => {
        calls.push(toolCall);
        chat.addToolOutput({
          tool: toolCall.toolName,
          toolCallId: toolCall.toolCallId,
          output: "12:34 in the test",
        });
      },
    });
    await chat.sendMessage({ text: "/tool what time is it?" });
    // The automatic resend runs after the first answer's end: wait for it to finish.
    for (let i = 0; i < 200 && (chat.status !== "ready" || chat.messages.length < 2); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    for (let i = 0; i < 200; i++) {
      const last = chat.messages.at(-1);
      if (chat.status === "ready" && last.parts.some((p) => p.type === "text")) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return {
      calls,
      messages: chat.messages,
      error: chat.error?.message ?? null,
    };
  },

  // stop() of the SDK aborts the fetch only; the chat's stop route ends the answer.
  async stop() {
    const chat = new Chat({ id: chatId, transport: transport() });
    const sent = chat.sendMessage({ text: "Stop me" });
    for (let i = 0; i < 200; i++) {
      const last = chat.messages.at(-1);
      if (last?.role === "assistant" && textOf(last).length > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await chat.stop();
    await sent;
    const response = await fetch(`${base}/api/chat/${chatId}/stop`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    const stopped = await response.json();
    const after = await transport().reconnectToStream({ chatId });
    return { status: response.status, stopped, after };
  },
};

const run = scenarios[scenario];
if (run === undefined) {
  console.error(`unknown scenario ${scenario}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await run()));
} catch (error) {
  console.log(JSON.stringify({ thrown: `${error.name}: ${error.message}` }));
  process.exit(1);
}
