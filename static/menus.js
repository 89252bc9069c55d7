// The page's menus (a message's details and copy, the project's actions): <details> elements
// that float their panel, and close when the person clicks elsewhere.

const COPY_LABEL = 'Copy message';
const COPY_STATE_MS = 2000;
const labelTimers = new WeakMap(); // button -> the timer that puts its label back

/** Copies a message's text, and says so on its button for a moment. */
export async function copyMessage(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    // No clipboard here (plain http from another host, a denied permission).
    button.textContent = 'Copy failed: select the text and press Ctrl+C';
  }
  clearTimeout(labelTimers.get(button));
  labelTimers.set(
    button,
    setTimeout(() => {
      button.textContent = COPY_LABEL;
    }, COPY_STATE_MS),
  );
}

/**
 * Every `details.menu` of the page, present or future: it opens downwards unless there is no
 * room for it there, and closes on a click elsewhere or Escape.
 */
export function handleMenus() {
  const close = (except) => {
    for (const menu of document.querySelectorAll('details.menu[open]')) {
      if (menu !== except) menu.open = false;
    }
  };
  document.addEventListener('click', (event) => close(event.target.closest?.('details.menu')));
  // A menu opens downwards, unless the scroller has no room for it there and has above.
  document.addEventListener(
    'toggle',
    (event) => {
      const menu = event.target;
      if (!menu.matches?.('details.menu') || !menu.open) return;
      const panel = menu.querySelector('.menu-panel');
      const room = (menu.closest('.scroller') ?? document.body).getBoundingClientRect();
      const at = menu.getBoundingClientRect();
      const needed = panel.getBoundingClientRect().height;
      const up = room.bottom - at.bottom < needed && at.top - room.top >= needed;
      menu.dataset.opens = up ? 'up' : 'down';
    },
    true, // toggle does not bubble
  );
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') close(null);
  });
}
