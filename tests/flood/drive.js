// Sets Flood up against dropseed and reads its torrent list in headless
// Chromium, as a user sees it. Run by tests/flood.rs, which starts dropseed
// and Flood and asserts on what this prints; it asserts nothing itself.
//
// 1. Flood's own HTTP API: register the first (admin) user with dropseed as
//    its qBittorrent client, ask Flood for its connection test and client
//    settings, switch its list to the expanded view, and add a .torrent as
//    Flood's "Add Torrents" dialog does.
// 2. Chromium (playwright-core, the system's /usr/bin/chromium): log in
//    through Flood's form, wait until the list shows every expected name,
//    then print one JSON line per torrent row (its name, its classes, which
//    carry Flood's status, and its text, which carries the progress) and
//    the sidebar's status filters, and save a screenshot; then, if asked,
//    start a stopped torrent with Flood's start button.
// 3. Flood's details view of one torrent (files, peers, trackers).
//
// Environment: FLOOD_URL, QBT_URL, QBT_USER, QBT_PASSWORD, CHROMIUM,
// EXPECT_NAMES (JSON list), SCREENSHOT (path), TIMEOUT_MS, and START_NAME:
// a torrent to start with Flood's start button after the screenshot;
// ADD_TORRENT: a .torrent file to add through Flood before the browser opens;
// DETAILS_HASH: a torrent whose details (files, peers, trackers) to ask
// Flood for; LINGER_MS: how long to keep the page open at the end;
// DUMP_HTML: print each row's HTML too (to debug a selector).

'use strict';

const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (v === undefined || v === '') throw new Error(`${name} is not set`);
  return v;
};

const floodUrl = env('FLOOD_URL');
const expectNames = JSON.parse(env('EXPECT_NAMES'));
const timeout = Number(process.env.TIMEOUT_MS || 30000);
// Flood's own user: nothing to do with dropseed's credentials.
const floodUser = 'flood-admin';
const floodPassword = 'flood test password';

// Flood's session cookie, once registered.
let jwt = '';
const say = (what, data) => console.log(JSON.stringify({ what, ...data }));

async function api(path, init = {}) {
  const res = await fetch(`${floodUrl}/api${path}`, {
    ...init,
    headers: { 'Content-Type': 'application/json', ...(init.headers || {}) },
  });
  const text = await res.text();
  return { status: res.status, text, cookie: res.headers.get('set-cookie') };
}

async function register() {
  const body = {
    username: floodUser,
    password: floodPassword,
    level: 10,
    client: {
      client: 'qBittorrent',
      type: 'web',
      version: 1,
      url: env('QBT_URL'),
      username: env('QBT_USER'),
      password: env('QBT_PASSWORD'),
    },
  };
  const r = await api('/auth/register?cookie=false', { method: 'POST', body: JSON.stringify(body) });
  if (r.status !== 200) throw new Error(`Flood refused the registration: ${r.status} ${r.text}`);
  const login = await api('/auth/authenticate', {
    method: 'POST',
    body: JSON.stringify({ username: floodUser, password: floodPassword }),
  });
  if (login.status !== 200) throw new Error(`Flood login: ${login.status} ${login.text}`);
  jwt = login.cookie.split(';')[0];
  const test = await api('/client/connection-test', { headers: { Cookie: jwt } });
  say('connection-test', { status: test.status, body: test.text });
  const settings = await api('/client/settings', { headers: { Cookie: jwt } });
  say('client-settings', { status: settings.status, body: settings.text });
  // The expanded list: a row with its name, status and "NN%" as text.
  const view = await api('/settings', {
    method: 'PATCH',
    headers: { Cookie: jwt },
    body: JSON.stringify({ torrentListViewSize: 'expanded' }),
  });
  if (view.status !== 200) throw new Error(`Flood settings: ${view.status} ${view.text}`);
}

async function readList(page) {
  return page.$$eval(
    '.torrent',
    (rows, dump) =>
      rows.map((row) => ({
        name: (row.querySelector('.torrent__details__section--primary') || row).textContent.trim(),
        classes: row.className,
        text: row.innerText.replace(/\s+/g, ' ').trim(),
        html: dump ? row.outerHTML : undefined,
      })),
    Boolean(process.env.DUMP_HTML),
  );
}

// Selects the row named `name`, presses Flood's start button, and waits
// until the list no longer shows it stopped (Flood polls every 2 s).
async function start(page, name, deadline) {
  const row = page.locator('.torrent', { has: page.locator('.torrent__details__section--primary', { hasText: name }) });
  await row.click();
  await page.click('.action--start-torrent');
  let seen = (await readList(page)).find((r) => r.name === name);
  while (seen && /\btorrent--is-stopped\b/.test(seen.classes) && Date.now() < deadline + timeout) {
    await page.waitForTimeout(250);
    seen = (await readList(page)).find((r) => r.name === name);
  }
  say('started', seen || { name, missing: true });
}

// Flood's "loading" overlay fades out once every dependency has arrived;
// an entry barrier would say the client is lost. At times the overlay stays
// up, every dependency ticked (its enter transition never ends when it is
// told to leave while entering, a race in Flood's UI on a busy machine): a
// user reloads the page then, and so does this, up to three times.
async function overlayGone(page, deadline) {
  const gone = () =>
    !document.querySelector('.application__entry-barrier') &&
    [...document.querySelectorAll('.application__loading-overlay')].every((o) => getComputedStyle(o).opacity === '0');
  for (let reloads = 0; ; reloads++) {
    const wait = Math.max(1000, Math.min(8000, deadline - Date.now()));
    const ok = await page.waitForFunction(gone, null, { timeout: wait, polling: 250 }).then(
      () => true,
      () => false,
    );
    if (ok) {
      say('overlay-gone', { reloads });
      return;
    }
    const overlays = await page.$$eval('.application__loading-overlay', (os) =>
      os.map((o) => `${getComputedStyle(o).opacity} ${o.className}: ${o.innerText.replace(/\s+/g, ' ')}`),
    );
    say('overlay-stuck', { overlays });
    if (reloads === 3 || Date.now() > deadline) throw new Error('the loading overlay never went away');
    await page.reload({ timeout });
    await page.waitForSelector('.torrent', { timeout });
  }
}

async function browse() {
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM'),
    // Loopback only: nothing of Chromium's own reaches the network.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout,
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 560 } });
    page.on('pageerror', (e) => say('page-error', { message: String(e) }));
    page.on('console', (m) => m.type() === 'error' && say('console-error', { message: m.text() }));
    page.on('response', (r) => r.status() >= 400 && say('http-error', { url: r.url(), status: r.status() }));
    await page.goto(`${floodUrl}/login`, { timeout });
    await page.fill('input[name="username"]', floodUser, { timeout });
    await page.fill('input[name="password"]', floodPassword);
    await page.click('button[type="submit"]');
    await page.waitForSelector('.torrent', { timeout });
    // Until every expected name is listed (the first poll may be partial).
    const deadline = Date.now() + timeout;
    let rows = await readList(page);
    while (!expectNames.every((n) => rows.some((r) => r.name === n)) && Date.now() < deadline) {
      await page.waitForTimeout(250);
      rows = await readList(page);
    }
    await overlayGone(page, deadline);
    rows = await readList(page);
    for (const row of rows) say('row', row);
    const filters = await page.$$eval('.sidebar-filter__item', (items) =>
      items.map((i) => i.innerText.replace(/\s+/g, ' ').trim()),
    );
    say('sidebar', { filters });
    await page.screenshot({ path: env('SCREENSHOT') });
    say('screenshot', { path: env('SCREENSHOT') });
    if (process.env.START_NAME) await start(page, process.env.START_NAME, deadline);
    // To watch what Flood polls with its page open (LINGER_MS=60000).
    await page.waitForTimeout(Number(process.env.LINGER_MS || 0));
  } finally {
    await browser.close();
  }
}

// What Flood's details view of a torrent gets: its files, peers and
// trackers, which Flood's server reads from dropseed.
async function details(hash) {
  const r = await api(`/torrents/${hash.toUpperCase()}/details`, { headers: { Cookie: jwt } });
  say('details', { status: r.status, body: r.text });
}

// Adds a .torrent file as Flood's "Add Torrents" dialog does (its default
// destination: the client's default save path).
async function addFile(path) {
  const file = require('fs').readFileSync(path).toString('base64');
  const r = await api('/torrents/add-files', {
    method: 'POST',
    headers: { Cookie: jwt },
    body: JSON.stringify({ files: [file], start: true }),
  });
  say('add', { status: r.status, body: r.text });
}

(async () => {
  await register();
  if (process.env.ADD_TORRENT) await addFile(process.env.ADD_TORRENT);
  await browse();
  if (process.env.DETAILS_HASH) await details(process.env.DETAILS_HASH);
  say('done', {});
})().catch((e) => {
  say('failed', { message: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
