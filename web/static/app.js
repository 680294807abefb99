// app.js: Roam's own page. It uses the same API as embedding pages
// (roam.js) and sets window.roam to the connected instance, so that
// scripts (and tests) can call window.roam.fetch(url).
//
// window.roamTimings holds milliseconds since navigation start
// (performance.now()): configLoaded, workerReady, signin, connected, and
// for the latest fetch of the address bar fetchStart, fetchHead, fetchEnd;
// roam.fetch also records lastFetchHead and lastFetchEnd (ms after its
// call).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const T = window.roamTimings;
  const TOKEN_KEY = 'roam.token';
  const MAX_SHOWN = 8 << 20; // body bytes kept and shown as text; the rest is counted, not kept

  let config = null;
  let conn = null; // the TCP console's RoamConn

  function setStatus(state, text) {
    $('status').dataset.state = state;
    $('status').textContent = text || state;
  }

  function showError(e) {
    $('error').textContent = e ? (e.message || String(e)) : '';
    if (e && e.detail) console.warn('roam:', e.code, e.detail);
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / (1 << 20)).toFixed(1)} MiB`;
  }

  function showStats(s) {
    $('rtt').textContent = s.rtt_ms ? s.rtt_ms.toFixed(1) : '–';
    $('bytes').textContent = `${fmtBytes(s.up)} / ${fmtBytes(s.down)}`;
  }

  function signedIn(on) {
    $('signin').hidden = on;
    $('signout').hidden = !on;
    $('token').disabled = on;
  }

  async function loadConfig() {
    try {
      config = await Roam.fetchConfig();
      T.configLoaded = performance.now();
      if (config.server) $('server').textContent = `server ${config.server}`;
    } catch (e) {
      config = null;
      showError(e);
    }
  }

  async function signIn() {
    const token = $('token').value;
    showError(null);
    if (!token) {
      showError(new Error('Enter the token the server\'s operator gave you.'));
      return;
    }
    if ($('remember').checked) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    T.signin = performance.now();
    setStatus('connecting', 'connecting…');
    $('signin').disabled = true;
    try {
      const roam = await Roam.connect({ token, config: config || undefined });
      window.roam = roam;
      T.connected = performance.now();
      setStatus('connected');
      signedIn(true);
      if (roam.welcome.server) $('server').textContent = `server ${roam.welcome.server}`;
      roam.onstatus = showStats;
      roam.onclose = (err) => {
        if (window.roam === roam) window.roam = null;
        setStatus('disconnected');
        signedIn(false);
        $('rtt').textContent = '–';
        showError(err ? err : null);
        if (err) console.warn('roam: session ended:', err.code, err.detail);
      };
    } catch (e) {
      setStatus('error');
      showError(e);
      if (e.code === 'unauthorized') sessionStorage.removeItem(TOKEN_KEY);
    } finally {
      $('signin').disabled = false;
    }
  }

  async function signOut() {
    const r = window.roam;
    if (r) await r.close();
    sessionStorage.removeItem(TOKEN_KEY);
    window.roam = null;
    setStatus('disconnected');
    signedIn(false);
  }

  function needRoam() {
    if (!window.roam) throw new Roam.RoamError('closed', 'Not connected: sign in first.');
    return window.roam;
  }

  async function go() {
    showError(null);
    const url = $('url').value.trim();
    for (const id of ['resp-status', 'resp-headers', 'resp-body', 'resp-note', 'resp-time']) $(id).textContent = '';
    const frame = $('resp-frame');
    frame.hidden = true;
    frame.removeAttribute('srcdoc');
    $('go').disabled = true;
    try {
      const roam = needRoam();
      let target = url;
      if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(target)) target = 'http://' + target;
      T.fetchStart = performance.now();
      const resp = await roam.fetch(target);
      T.fetchHead = performance.now();
      $('resp-status').textContent = `${resp.status} ${resp.statusText}`.trim();
      const lines = [];
      for (const [k, v] of resp.headers) lines.push(`${k}: ${v}`);
      $('resp-headers').textContent = lines.join('\n');
      const { shown, total } = await readCapped(resp, MAX_SHOWN);
      T.fetchEnd = performance.now();
      $('resp-time').textContent = `(${total} bytes, first byte ${(T.fetchHead - T.fetchStart).toFixed(0)} ms, total ${(T.fetchEnd - T.fetchStart).toFixed(0)} ms)`;
      const text = new TextDecoder().decode(shown);
      $('resp-body').textContent = text;
      if (total > shown.byteLength) $('resp-note').textContent = `showing the first ${fmtBytes(shown.byteLength)} of ${fmtBytes(total)}`;
      if ((resp.headers.get('content-type') || '').toLowerCase().startsWith('text/html')) {
        frame.srcdoc = text;
        frame.hidden = false;
      }
    } catch (e) {
      showError(e);
    } finally {
      $('go').disabled = false;
    }
  }

  // readCapped reads resp's body to the end, keeping its first max bytes:
  // a large download is counted without being held in memory.
  async function readCapped(resp, max) {
    const kept = [];
    let keptBytes = 0;
    let total = 0;
    if (resp.body) {
      const rd = resp.body.getReader();
      for (;;) {
        const { value, done } = await rd.read();
        if (done) break;
        total += value.byteLength;
        if (keptBytes < max) {
          const part = value.byteLength > max - keptBytes ? value.subarray(0, max - keptBytes) : value;
          kept.push(part);
          keptBytes += part.byteLength;
        }
      }
    }
    const shown = new Uint8Array(keptBytes);
    let off = 0;
    for (const c of kept) { shown.set(c, off); off += c.byteLength; }
    return { shown, total };
  }

  function tcpUI(open) {
    $('tcp-connect').disabled = open;
    $('tcp-close').disabled = !open;
    $('tcp-send').disabled = !open;
    $('tcp-target').disabled = open;
  }

  async function tcpConnect() {
    showError(null);
    const target = $('tcp-target').value.trim();
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(target);
    if (!m) {
      showError(new Error(`Bad input: target ${JSON.stringify(target)} is not host:port.`));
      return;
    }
    const host = m[1].replace(/^\[|\]$/g, '');
    const out = $('tcp-output');
    $('tcp-connect').disabled = true;
    try {
      const c = await needRoam().dial(host, Number(m[2]));
      conn = c;
      tcpUI(true);
      out.textContent += `[connected to ${target}]\n`;
      const dec = new TextDecoder();
      c.onmessage = (u8) => { out.textContent += dec.decode(u8, { stream: true }); };
      c.onclose = (err) => {
        c.close(); // the peer finished: release the flow (close is idempotent)
        out.textContent += err ? `[${err.message}]\n` : '[closed]\n';
        if (err) showError(err);
        if (conn === c) { conn = null; tcpUI(false); }
      };
    } catch (e) {
      showError(e);
      tcpUI(false);
    }
  }

  async function tcpSend() {
    if (!conn) return;
    const line = $('tcp-line').value;
    $('tcp-line').value = '';
    try {
      await conn.send(line + '\n');
    } catch (e) {
      showError(e);
    }
  }

  function tcpClose() {
    if (conn) conn.close();
  }

  function on(id, ev, f) {
    $(id).addEventListener(ev, (e) => { e.preventDefault(); f(); });
  }

  on('signin-form', 'submit', signIn);
  on('signout', 'click', signOut);
  on('url-form', 'submit', go);
  on('tcp-form', 'submit', tcpConnect);
  on('tcp-line-form', 'submit', tcpSend);
  on('tcp-close', 'click', tcpClose);

  setStatus('disconnected');
  // Start the worker and roam.wasm while the user types the token.
  Roam.load().catch((e) => { setStatus('error'); showError(e); });
  loadConfig().then(() => {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && config) {
      $('token').value = saved;
      $('remember').checked = true;
      signIn();
    }
  });
})();
