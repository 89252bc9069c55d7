// The project list in the sidebar: newest first, the open one marked with aria-current. And the
// title of a project started by its first message.

// The server takes titles of up to 200 characters; one read in a sidebar is better shorter.
const TITLE_LENGTH = 80;

/**
 * A title from a first message: its first words, cut at a word boundary (and marked with an
 * ellipsis) when the message is longer than TITLE_LENGTH characters.
 */
export function titleFrom(text) {
  const whole = text.trim().split(/\s+/).join(' ');
  const characters = Array.from(whole); // code points: a cut never splits a surrogate pair
  if (characters.length <= TITLE_LENGTH) return whole;
  const room = TITLE_LENGTH - 1; // and one for the ellipsis
  // One character more than there is room for: a space there means the word before it fits.
  const head = characters.slice(0, room + 1).join('');
  const boundary = head.lastIndexOf(' ');
  const cut = boundary > 0 ? head.slice(0, boundary) : characters.slice(0, room).join('');
  return `${cut}…`;
}

export class ProjectList {
  #list;
  #empty;
  #projects = new Map(); // id -> Project
  #openId = null;

  constructor(list, empty, onSelect) {
    this.#list = list;
    this.#empty = empty;
    // One listener for the whole list, so re-rendering never leaks handlers.
    list.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-project-id]');
      if (button) onSelect(button.dataset.projectId);
    });
  }

  get newest() {
    return this.#list.firstElementChild?.dataset.projectId ?? null;
  }

  get(projectId) {
    return this.#projects.get(projectId);
  }

  render(projects) {
    this.#projects = new Map(projects.map((project) => [project.id, project]));
    this.#list.replaceChildren(...projects.map((project) => this.#item(project)));
    this.#sync();
  }

  /** A project created here (or found by id) that the list does not show yet goes on top. */
  add(project) {
    if (this.#projects.has(project.id)) return;
    this.#projects.set(project.id, project);
    this.#list.prepend(this.#item(project));
    this.#sync();
  }

  /** A project renamed here: its new title in place, where it was. */
  update(project) {
    if (!this.#projects.has(project.id)) return;
    this.#projects.set(project.id, project);
    const item = this.#list.querySelector(`li[data-project-id="${CSS.escape(project.id)}"]`);
    item?.replaceWith(this.#item(project));
    this.#sync();
  }

  /** A project deleted here (or gone): off the list. */
  remove(projectId) {
    this.#projects.delete(projectId);
    this.#list.querySelector(`li[data-project-id="${CSS.escape(projectId)}"]`)?.remove();
    if (this.#openId === projectId) this.#openId = null;
    this.#sync();
  }

  markOpen(projectId) {
    this.#openId = projectId;
    this.#sync();
  }

  clear() {
    this.render([]);
    this.#openId = null;
  }

  #item(project) {
    const item = document.createElement('li');
    item.dataset.projectId = project.id;
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.projectId = project.id;
    const title = document.createElement('span');
    title.className = 'project-title';
    title.textContent = project.title;
    const created = document.createElement('time');
    created.className = 'project-created';
    created.dateTime = project.created_at;
    const date = new Date(project.created_at);
    if (!Number.isNaN(date.getTime())) created.textContent = date.toLocaleDateString();
    button.append(title, created);
    item.append(button);
    return item;
  }

  #sync() {
    for (const button of this.#list.querySelectorAll('button[data-project-id]')) {
      if (button.dataset.projectId === this.#openId) button.setAttribute('aria-current', 'page');
      else button.removeAttribute('aria-current');
    }
    this.#empty.hidden = this.#projects.size > 0;
  }
}
