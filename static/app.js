// Wiring: sign-in from the URL fragment, the project list and the ?project= URL, sign-out, and
// where problems are shown (the banner, or the signed-out notice for 401).

import { api, network } from './api.js';
import { Composer } from './composer.js';
import { ConnectionIndicator } from './connection.js';
import { Conversation } from './conversation.js';
import { handleCopyButtons } from './markdown.js';
import { copyMessage, handleMenus } from './menus.js';
import { ProjectList, titleFrom } from './projects.js';
import { Banner, MessageList, announcer } from './view.js';

const $ = (selector) => document.querySelector(selector);

const banner = new Banner($('#banner'));
const connection = new ConnectionIndicator($('#connection'), network);
const messages = new MessageList({
  list: $('#messages'),
  scroller: $('#scroller'),
  template: $('#message-template'),
  empty: $('#empty'),
  olderButton: $('#load-older'),
});
const composer = new Composer($('#composer'), {
  onSend: (text) => conversation.send(text),
  onCancel: () => conversation.cancel(),
});
const conversation = new Conversation({
  messages,
  composer,
  connection,
  announce: announcer($('#announcer')),
  report,
  resolved: (code) => banner.hideIf(code),
  succeeded: () => banner.hide(),
  scroller: $('#scroller'),
  olderButton: $('#load-older'),
  startProject,
});
handleCopyButtons($('#messages'));
messages.onCopy((messageId, button) => copyMessage(messages.textOf(messageId), button));
handleMenus();
const projects = new ProjectList($('#projects'), $('#no-projects'), (projectId) => {
  setSidebarOpen(false);
  if (projectId !== conversation.projectId) openProject(projectId, { push: true });
});

/** Every failure ends here: 401 means the session is gone, anything else is worth a banner. */
function report(problem) {
  if (problem.status === 401) showSignedOut();
  else banner.show(problem);
}

function showSignedOut() {
  conversation.close();
  projects.clear();
  showProjectTitle(null);
  setSignedIn(false);
}

/** The open project's title above the conversation (nothing at all with none open). */
function showProjectTitle(project) {
  $('#project-title').textContent = project?.title ?? '';
  $('.conversation-head').hidden = !project;
  $('#project-menu').open = false;
  document.title = project ? `${project.title} · Orderly` : 'Orderly';
}

function setSignedIn(signedIn) {
  if (!signedIn) $('#account').hidden = true;
  $('#signed-out').hidden = signedIn;
  for (const selector of ['#app', '#sign-out', '#projects-toggle']) $(selector).hidden = !signedIn;
}

const projectInUrl = () => new URLSearchParams(location.search).get('project');

function putProjectInUrl(projectId, { push }) {
  const url = new URL(location.href);
  url.searchParams.set('project', projectId);
  url.hash = '';
  if (url.href === location.href) return;
  if (push) history.pushState({ project: projectId }, '', url);
  else history.replaceState({ project: projectId }, '', url);
}

let openRequest = 0; // only the latest click (or Back) may take over the page

async function openProject(projectId, { push }) {
  const request = ++openRequest;
  try {
    const project = projects.get(projectId) ?? (await api.getProject(projectId));
    if (request !== openRequest) return;
    projects.add(project);
    projects.markOpen(project.id);
    showProjectTitle(project);
    putProjectInUrl(project.id, { push });
    await conversation.open(project.id);
    if (push) banner.hide(); // the person's own choice went through (not the fallback below)
  } catch (problem) {
    if (request !== openRequest) return;
    report(problem);
    // An unknown, someone else's or malformed project id in the URL: open the newest instead.
    const newest = projects.newest;
    if ([400, 404, 422].includes(problem.status) && newest && newest !== projectId) {
      await openProject(newest, { push: false });
    }
  }
}

/** A first message sent with no project open: a new project, titled from it, opened. */
async function startProject(text) {
  try {
    const project = await api.createProject(titleFrom(text));
    projects.add(project);
    setSidebarOpen(false);
    await openProject(project.id, { push: true });
    return project.id;
  } catch (problem) {
    report(problem);
    return null;
  }
}

/**
 * `make run` prints a URL carrying a token in the fragment (never sent to the server in a URL).
 * Trade it for the HttpOnly session cookie, and take it out of the address bar and this history
 * entry first, so it is not bookmarked or shared by accident.
 *
 * A link is not proof that its reader owns the account: anyone can send one. Over a session of
 * another account the server refuses (409 another_account_signed_in) and names both accounts;
 * the page then asks, staying signed in unless the person chooses the link's account.
 */
async function signInFromFragment() {
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  if (!token) return;
  history.replaceState(history.state, '', location.pathname + location.search);
  try {
    await api.signIn(token);
  } catch (problem) {
    if (problem.code === 'another_account_signed_in') {
      await askToSwitch(token, problem.members);
      return;
    }
    // Say why (an unknown or revoked token, say); an older session cookie may still work.
    banner.show(problem);
  }
}

let asking = null; // the question open now, if any: a second link replaces its token

/** Asks whether to leave `signed_in_username` for `token_username`; switches only on yes. */
async function askToSwitch(token, { signed_in_username: signedIn, token_username: tokenUser }) {
  const dialog = $('#switch-account');
  for (const element of dialog.querySelectorAll('.signed-in-username')) {
    element.textContent = signedIn;
  }
  for (const element of dialog.querySelectorAll('.token-username')) {
    element.textContent = tokenUser;
  }
  if (asking) {
    asking.token = token;
    return asking.answered;
  }
  const question = { token };
  question.answered = new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      async () => {
        asking = null;
        if (dialog.returnValue === 'switch') {
          try {
            await api.signIn(question.token, { replace: true });
          } catch (problem) {
            banner.show(problem);
          }
        }
        resolve();
      },
      { once: true },
    );
  });
  asking = question;
  dialog.returnValue = '';
  dialog.showModal(); // Escape closes it with returnValue '': staying is the default
  return question.answered;
}

async function showAccount() {
  try {
    const { username } = await api.whoAmI();
    $('#account').textContent = username;
    $('#account').hidden = false;
  } catch {
    $('#account').hidden = true;
  }
}

async function start() {
  await signInFromFragment();
  let list;
  try {
    ({ projects: list } = await api.listProjects());
  } catch (problem) {
    report(problem);
    return;
  }
  setSignedIn(true);
  learnMessageLimit();
  showAccount();
  projects.render(list);
  const wanted = projectInUrl() ?? projects.newest;
  if (wanted) await openProject(wanted, { push: false });
  else conversation.close(); // nothing to open: the message box starts a project
}

$('#new-project').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const title = form.elements.title.value.trim();
  if (!title) return;
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const project = await api.createProject(title);
    form.reset();
    projects.add(project);
    setSidebarOpen(false);
    await openProject(project.id, { push: true });
    composer.focus();
  } catch (problem) {
    report(problem);
  } finally {
    button.disabled = false;
  }
});

$('#sign-out').addEventListener('click', async () => {
  try {
    await api.signOut();
    banner.hide();
    showSignedOut();
  } catch (problem) {
    report(problem);
  }
});

// Signed out, a pasted token signs in again (POST /api/session: never in a URL, never logged).
$('#sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const field = form.elements.token;
  const token = field.value.trim();
  if (!token) return;
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    await api.signIn(token);
    form.reset();
    banner.hide();
    await start();
  } catch (problem) {
    banner.show(problem); // an unknown or revoked token: say so, and let them paste another
    field.select();
  } finally {
    button.disabled = false;
  }
});

/** The server's message length limit, for the composer's counter; none known if it fails. */
async function learnMessageLimit() {
  try {
    composer.maxChars = await api.maxMessageChars();
  } catch {
    // The server still refuses a message that is too long, with a banner saying so.
  }
}

// Renaming the open project: its title in a field in place (the menu), saved with Enter.
$('#rename-title').addEventListener('input', (event) => event.currentTarget.setCustomValidity(''));
$('#rename-project').addEventListener('click', () => {
  const project = projects.get(conversation.projectId);
  $('#rename-form').hidden = false;
  $('#rename-project').hidden = true;
  $('#rename-title').value = project?.title ?? $('#project-title').textContent;
  $('#rename-title').select();
  $('#rename-title').focus();
});
$('#rename-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const projectId = conversation.projectId;
  const field = $('#rename-title');
  const title = field.value.trim();
  if (!projectId) return;
  if (!title) {
    // Spaces alone pass `required`: say why nothing is saved, as the browser says for empty.
    field.setCustomValidity('A title needs more than spaces.');
    field.reportValidity();
    return;
  }
  const button = event.currentTarget.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const project = await api.renameProject(projectId, title);
    projects.update(project);
    if (conversation.projectId === project.id) showProjectTitle(project);
  } catch (problem) {
    report(problem);
  } finally {
    button.disabled = false;
    $('#project-menu').open = false;
  }
});

// Deleting the open project: asked in place (the menu), then its answers stop and it is gone.
$('#delete-project').addEventListener('click', () => {
  $('#delete-confirm').hidden = false;
  $('#delete-project').hidden = true;
  $('#rename-project').hidden = true;
  $('#delete-confirm-no').focus();
});
$('#project-menu').addEventListener('toggle', () => {
  $('#delete-confirm').hidden = true;
  $('#delete-project').hidden = false;
  $('#rename-form').hidden = true;
  $('#rename-project').hidden = false;
});
$('#delete-confirm-no').addEventListener('click', () => {
  $('#project-menu').open = false;
});
$('#delete-confirm-yes').addEventListener('click', async (event) => {
  const projectId = conversation.projectId;
  if (!projectId) return;
  const button = event.currentTarget;
  button.disabled = true;
  try {
    await api.deleteProject(projectId);
  } catch (problem) {
    report(problem);
    return;
  } finally {
    button.disabled = false;
    $('#project-menu').open = false;
  }
  banner.hide();
  projects.remove(projectId);
  if (conversation.projectId !== projectId) return; // another one was opened meanwhile
  const next = projects.newest;
  if (next) {
    await openProject(next, { push: false });
    return;
  }
  conversation.close(); // nothing left: the message box starts a project
  showProjectTitle(null);
  const url = new URL(location.href);
  url.searchParams.delete('project');
  history.replaceState(null, '', url);
});

function setSidebarOpen(open) {
  $('#app').classList.toggle('sidebar-open', open);
  $('#projects-toggle').setAttribute('aria-expanded', String(open));
}
$('#projects-toggle').addEventListener('click', () => {
  setSidebarOpen(!$('#app').classList.contains('sidebar-open'));
});

// Back and Forward move between projects opened here.
window.addEventListener('popstate', () => {
  const projectId = projectInUrl();
  if (projectId && projectId !== conversation.projectId) openProject(projectId, { push: false });
});
// Pasting the `make run` URL into a tab already showing this page only changes the fragment:
// no reload, so sign in from here too.
window.addEventListener('hashchange', () => {
  if (new URLSearchParams(location.hash.slice(1)).has('token')) start();
});
window.addEventListener('online', () => conversation.retryNow());
// A page restored from the back/forward cache lost its streams: reload what is open.
window.addEventListener('pageshow', (event) => {
  if (event.persisted && conversation.projectId) {
    openProject(conversation.projectId, { push: false });
  }
});

start();
