// Answers as Markdown, safely, while they stream.
//
// markdown-it renders with `html: false`: raw HTML in an answer is escaped, so it shows as text
// and never becomes an element. DOMPurify then keeps only the tags and attributes listed here,
// in case a renderer bug let anything else through, and hands back DOM nodes: nothing here sets
// innerHTML on the page. Links may only be http, https or mailto; images are not rendered (the
// page's CSP would block them, and loading one would tell its host who reads the answer).
// Nothing gets a style attribute (the CSP allows none): table alignment becomes a class.

import markdownit from './vendor/markdown-it/markdown-it.js';
import DOMPurify from './vendor/dompurify/purify.js';

const SAFE_URL = /^(?:https?|mailto):/i;

const markdown = markdownit({ html: false, linkify: false, typographer: false });
markdown.disable('image');
markdown.validateLink = (url) => SAFE_URL.test(url);
markdown.core.ruler.push('align_as_class', (state) => {
  for (const token of state.tokens) {
    if ((token.type === 'th_open' || token.type === 'td_open') && token.attrs) alignAsClass(token);
  }
});

function alignAsClass(token) {
  const align = /^text-align:(left|right|center)$/.exec(token.attrGet('style') ?? '')?.[1];
  token.attrs = token.attrs.filter(([name]) => name !== 'style');
  if (align) token.attrJoin('class', `align-${align}`);
}

// A DOMPurify of our own, so that its hook applies only here.
const purify = DOMPurify(window);
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});
const ALLOWED = {
  // What markdown-it makes from Markdown with html: false and no images, and nothing else.
  ALLOWED_TAGS: [
    'p', 'br', 'hr', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'blockquote', 'ul', 'ol', 'li',
    'pre', 'code', 'em', 'strong', 's', 'a', 'table', 'thead', 'tbody', 'tr', 'th', 'td',
  ],
  ALLOWED_ATTR: ['href', 'title', 'start', 'class'],
  ALLOWED_URI_REGEXP: SAFE_URL,
  RETURN_DOM_FRAGMENT: true,
};

/**
 * The HTML of each top-level block of `source` (a paragraph, a list, a code block...), in order.
 * Joined, they are markdown-it's rendering of the whole.
 */
function blocksOf(source) {
  const env = {};
  const tokens = markdown.parse(source, env);
  const blocks = [];
  let start = 0;
  tokens.forEach((token, index) => {
    // A top-level block ends with its closing token, or is a single token (a fence, a rule).
    if (token.level === 0 && token.nesting <= 0) {
      blocks.push(markdown.renderer.render(tokens.slice(start, index + 1), markdown.options, env));
      start = index + 1;
    }
  });
  return blocks;
}

/** One block's HTML as sanitised DOM nodes; a code block gets a copy button. */
function renderBlock(html) {
  const fragment = purify.sanitize(html, ALLOWED);
  for (const pre of fragment.querySelectorAll('pre')) addCopyButton(pre);
  return fragment;
}

// The button's label comes from CSS (markdown.css), so that the answer's text (what a reader
// selects and copies) does not include "Copy" once per code block.
function addCopyButton(pre) {
  const block = document.createElement('div');
  block.className = 'code-block';
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'copy-code';
  button.setAttribute('aria-label', 'Copy code');
  pre.replaceWith(block);
  block.append(button, pre);
}

const COPY_LABELS = { copied: 'Copied', failed: 'Copy failed: the code is selected' };
const COPY_STATE_MS = 2000;
const copyTimers = new WeakMap(); // button -> the timer that puts its label back

/** One click listener for every copy button under `root`, present or future. */
export function handleCopyButtons(root) {
  root.addEventListener('click', async (event) => {
    const button = event.target.closest?.('button.copy-code');
    const code = button?.parentElement.querySelector('pre');
    if (!code) return;
    try {
      // Without the newline that ends every code block: pasted into a shell, it would run the
      // last line at once.
      await navigator.clipboard.writeText(code.textContent.replace(/\n$/, ''));
      showCopyState(button, 'copied');
    } catch {
      // No clipboard here (a page served over plain http from another host, a denied
      // permission): select the code instead, so that Ctrl+C copies it.
      window.getSelection()?.selectAllChildren(code);
      showCopyState(button, 'failed');
    }
  });
}

function showCopyState(button, state) {
  button.dataset.state = state;
  button.setAttribute('aria-label', COPY_LABELS[state]);
  clearTimeout(copyTimers.get(button));
  const timer = setTimeout(() => {
    delete button.dataset.state;
    button.setAttribute('aria-label', 'Copy code');
  }, COPY_STATE_MS);
  copyTimers.set(button, timer);
}

// Parsing costs time in proportion to the answer's length, so streamed pieces are rendered
// together at the next frame; and when one render took long, the next waits a few times as long.
// Only the blocks that changed are sanitised and replaced (while an answer streams, usually just
// its last one): a long answer costs a parse per frame, not a whole new DOM.
const RENDER_SHARE = 4;
const HIDDEN_TAB_MS = 250; // background tabs get no animation frames

function nextFrame(callback) {
  if (document.hidden) setTimeout(callback, HIDDEN_TAB_MS);
  else requestAnimationFrame(callback);
}

/** One answer's content element: its Markdown source, shown rendered. */
export class MarkdownContent {
  #element;
  #aroundDeferred;
  #source = '';
  #shown = null;
  #blocks = []; // what the element shows: [{ html, nodes }] per top-level block
  #scheduled = false;
  #lastCost = 0;

  /**
   * `aroundDeferred(render)` wraps renders that happen later than the call that asked for them
   * (streamed pieces), e.g. to keep the view scrolled to the bottom.
   */
  constructor(element, aroundDeferred = (render) => render()) {
    this.#element = element;
    this.#aroundDeferred = aroundDeferred;
    element.classList.add('markdown');
  }

  /** Shows `source` now: a finished message, a page of history, a replay's start. */
  set(source) {
    this.#source = source;
    this.#render();
  }

  /** Adds a streamed piece; shown at the next frame, together with whatever else arrives. */
  append(text) {
    this.#source += text;
    if (this.#scheduled) return;
    this.#scheduled = true;
    const run = () => {
      this.#scheduled = false;
      this.#aroundDeferred(() => this.#render());
    };
    const wait = this.#lastCost * RENDER_SHARE;
    if (wait > 16) setTimeout(() => nextFrame(run), wait);
    else nextFrame(run);
  }

  #render() {
    if (this.#source === this.#shown) return;
    const started = performance.now();
    const blocks = blocksOf(this.#source);
    let kept = 0;
    while (kept < blocks.length && blocks[kept] === this.#blocks[kept]?.html) kept += 1;
    for (const stale of this.#blocks.splice(kept)) {
      for (const node of stale.nodes) node.remove();
    }
    for (const html of blocks.slice(kept)) {
      const fragment = renderBlock(html);
      this.#blocks.push({ html, nodes: [...fragment.childNodes] });
      this.#element.append(fragment);
    }
    this.#shown = this.#source;
    this.#markEnd();
    this.#lastCost = performance.now() - started;
  }

  /** The Markdown source shown (what copying the message copies). */
  get source() {
    return this.#source;
  }

  /**
   * The streaming cursor goes after the last text, inside the innermost block that holds it
   * (the last list item, table cell, quoted paragraph): after a list or a table as a whole it
   * would sit on a line of its own, below the text. A code block's text ends with a line break,
   * so it gets none.
   */
  #markEnd() {
    this.#element.querySelector('.stream-end')?.classList.remove('stream-end');
    let node = this.#element.lastElementChild;
    while (node && descends(node)) node = node.lastElementChild;
    if (node && !NO_CURSOR.has(node.tagName)) node.classList.add('stream-end');
  }
}

// Blocks whose text is in their last child block.
const CONTAINERS = new Set(['UL', 'OL', 'BLOCKQUOTE', 'TABLE', 'THEAD', 'TBODY', 'TR', 'DIV']);
const BLOCKS = new Set(['P', 'UL', 'OL', 'BLOCKQUOTE', 'DIV', 'PRE', 'TABLE', 'HR']);
const NO_CURSOR = new Set(['PRE', 'HR', 'DIV']);

function descends(node) {
  const last = node.lastElementChild;
  if (!last) return false;
  if (CONTAINERS.has(node.tagName)) return true;
  // A list item's text, unless it ends with a paragraph (a loose list) or a nested list.
  return node.tagName === 'LI' && BLOCKS.has(last.tagName);
}
