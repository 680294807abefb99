// roam.js: the JavaScript API of Roam's browser client, for Roam's own page
// and for pages that embed it. Load it with a <script> tag from the Roam
// server; it defines window.Roam:
//
//   const roam = await Roam.connect({ token });        // signs in
//   const resp = await roam.fetch('http://10.1.2.3/'); // a real Response
//   const conn = await roam.dial('10.1.2.3', 22);      // a raw TCP flow
//   conn.onmessage = (bytes) => ...; await conn.send('line\n'); conn.close();
//
// The Go client (roam.wasm) runs in a Dedicated Worker (worker.js); this
// file talks to it with postMessage, transferring ArrayBuffers. Errors are
// RoamError objects: .code is stable (see CODES in docs/browser-client.md),
// .message is for the user, .detail is the technical cause.
'use strict';

(function (global) {
  const CONFIG_PATH = '/roam/config.json';
  const WT_PATH = '/roam/wt';
  const QUEUE_BYTES = 1 << 20; // a body's bytes buffered in the page before the worker waits

  const scriptBase = (() => {
    const s = global.document && global.document.currentScript;
    return new URL('./', (s && s.src) || global.location.href).href;
  })();

  class RoamError extends Error {
    constructor(code, message, detail, dst) {
      super(message);
      this.name = 'RoamError';
      this.code = code;
      this.detail = detail || '';
      if (dst) this.dst = dst;
    }
  }

  function hostOf(u) {
    try { return new URL(u).host; } catch (e) { return u; }
  }

  // humanMessage says what went wrong in words a user can act on.
  function humanMessage(code, info, ctx) {
    const dst = info.dst || ctx.dst || 'the destination';
    const server = ctx.url ? hostOf(ctx.url) : 'the server';
    switch (code) {
      case 'unauthorized': return 'Wrong token: the server did not accept it.';
      case 'server-unreachable': return `Server unreachable: ${info.message}`;
      case 'no-answer': return `No answer from ${server} over UDP (QUIC): UDP to that port is probably blocked by a firewall, or the server is down.`;
      case 'handshake': return `Could not open a secure session to ${server}: either its certificate does not match the one it published (reload the page), or UDP to that port is blocked by a firewall.`;
      case 'unsupported': return 'This browser has no WebTransport: use a current Chrome, Edge or Firefox.';
      case 'bad-config': return `The server's page configuration is not usable: ${info.message}`;
      case 'wasm-missing': return 'The client program (roam.wasm) is missing on this server: build it with `go generate ./web` and rebuild the server.';
      case 'wasm-load': case 'exited': return `The client program failed: ${info.message}`;
      case 'shutdown': return 'The server is shutting down or restarting: sign in again in a moment.';
      case 'session':
        switch (info.reason) {
          case 'protocol': return 'The server ended the session: this page and the server do not speak the same protocol (reload the page; if that does not help, the server\'s operator should know).';
          case 'timeout': return 'The server ended the session: the sign-in did not reach it in time. Check your connection and sign in again.';
        }
        return `The server ended the session: ${info.message}`;
      case 'closed': return 'Not connected: the session to the server has ended.';
      case 'lost': return 'The connection to the server was lost: sign in again.';
      case 'prohibited': return `Refused by policy: the server does not allow connections to ${dst}.`;
      case 'refused': return `Connection refused: nothing accepted the connection at ${dst}.`;
      case 'timeout':
        // Without a destination it is the sign-in that timed out.
        if (!info.dst && !ctx.dst) return `Timed out: ${server} did not answer the sign-in in time. Check your connection and sign in again.`;
        return `Timed out: ${dst} did not answer in time.`;
      case 'unreachable': return `Unreachable: the server has no route to ${dst}, or the name does not resolve.`;
      case 'limit': return 'Too many connections at once: the server\'s flow limit was reached. Try again in a moment.';
      case 'reset': return `The connection to ${dst} was reset.`;
      case 'canceled': return 'Cancelled.';
      case 'bad-input': return info.message.replace(/^.*?bad input: /, 'Bad input: ');
      case 'protocol': return `The server broke the protocol: ${info.message}`;
    }
    return info.message || code;
  }

  function roamError(info, ctx = {}) {
    const code = info.code || 'other';
    const e = new RoamError(code, humanMessage(code, info, ctx), info.message, info.dst || ctx.dst);
    if (info.reason) e.reason = info.reason; // the server's SESSION_ERROR code
    return e;
  }

  // Link is one worker running roam.wasm.
  class Link {
    constructor(base) {
      this.base = base;
      this.nextId = 1;
      this.handlers = new Map(); // id → {result, error, head, data, end, sent}
      this.instance = null; // the connected Roam
      this.dead = null; // the RoamError once the worker or Go has failed
      let ready, fail;
      this.ready = new Promise((res, rej) => { ready = res; fail = rej; });
      this.fail = fail;
      let w;
      if (new URL(base).origin === global.location.origin) {
        w = new Worker(base + 'worker.js');
      } else {
        // A worker must be same-origin: start one from a blob that
        // imports the Roam server's scripts (which must allow CORS).
        const src = `self.roamBase=${JSON.stringify(base)};importScripts(${JSON.stringify(base + 'worker.js')});`;
        w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
      }
      this.worker = w;
      w.onerror = (e) => {
        e.preventDefault();
        fail(roamError({ code: 'wasm-load', message: `worker failed: ${e.message || 'error'}` }));
      };
      w.onmessage = (e) => this.receive(e.data, ready, fail);
    }

    receive(m, ready, fail) {
      switch (m.op) {
        case 'ready':
          global.roamTimings.workerReady = performance.now();
          ready(this);
          return;
        case 'fatal':
          this.die({ code: m.code, message: m.message }, fail);
          return;
        case 'status':
          if (m.id === 0) {
            if (this.instance) this.instance._status(JSON.parse(m.json));
            return;
          }
          break;
        case 'closed':
          if (this.instance) this.instance._closed(JSON.parse(m.json));
          return;
      }
      const h = this.handlers.get(m.id);
      if (!h) return;
      const f = h[m.op === 'status' ? 'result' : m.op];
      if (f) f(m.data !== undefined ? m.data : m.json);
    }

    // die marks the link dead (Go exited or could not start): the session
    // ends, calls in progress and later ones fail with info, and the next
    // Roam.load starts a new worker.
    die(info, fail) {
      if (this.dead) return;
      this.dead = roamError(info);
      fail(this.dead);
      if (links.get(this.base) === this.ready) links.delete(this.base);
      const hs = [...this.handlers.values()];
      this.handlers.clear();
      const j = JSON.stringify(info);
      for (const h of hs) if (h.error) h.error(j);
      if (this.instance) this.instance._closed(info);
      this.worker.terminate();
    }

    post(msg, transfer) {
      if (this.dead) {
        // Fail asynchronously, as an answer from the worker would.
        const h = this.handlers.get(msg.id);
        if (h && h.error) {
          this.handlers.delete(msg.id);
          const j = JSON.stringify({ code: this.dead.code, message: this.dead.detail });
          queueMicrotask(() => h.error(j));
        }
        return;
      }
      this.worker.postMessage(msg, transfer || []);
    }

    // call posts msg with a new id and resolves with the parsed 'result'
    // or rejects with a RoamError.
    call(msg, transfer, ctx = {}) {
      const id = this.nextId++;
      msg.id = id;
      return new Promise((resolve, reject) => {
        this.handlers.set(id, {
          result: (j) => { this.handlers.delete(id); resolve(JSON.parse(j)); },
          error: (j) => { this.handlers.delete(id); reject(roamError(JSON.parse(j), ctx)); },
        });
        this.post(msg, transfer);
      });
    }
  }

  const links = new Map(); // base → Promise<Link>

  // load starts the worker and roam.wasm (once per base) and resolves when
  // Go runs; it rejects with a RoamError ('wasm-missing' if the server has
  // no roam.wasm).
  function load(opts = {}) {
    const base = opts.base ? new URL('./', new URL(opts.base, global.location.href)).href : scriptBase;
    if (!links.has(base)) {
      const link = new Link(base);
      links.set(base, link.ready);
      link.ready.catch(() => links.delete(base));
    }
    return links.get(base);
  }

  // fetchConfig fetches the server's page configuration (webproto
  // PageConfig: url, cert_hashes, server).
  async function fetchConfig(opts = {}) {
    const base = opts.base ? new URL(opts.base, global.location.href).href : scriptBase;
    const u = new URL(CONFIG_PATH, base).href;
    let resp;
    try {
      resp = await global.fetch(u, { cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      throw roamError({ code: 'server-unreachable', message: `could not load ${u} (${e.message || e}).` });
    }
    if (!resp.ok) {
      throw roamError({ code: 'server-unreachable', message: `${u} answered HTTP ${resp.status}.` });
    }
    try {
      const c = await resp.json();
      global.roamTimings.configLoaded = global.roamTimings.configLoaded || performance.now();
      return c;
    } catch (e) {
      throw roamError({ code: 'bad-config', message: `${u} is not JSON: ${e.message}` });
    }
  }

  function sessionURL(config, base) {
    if (config && config.url) return config.url;
    return 'https://' + new URL(base).host + WT_PATH;
  }

  // toBytes returns a fresh Uint8Array (its buffer is transferred).
  function toBytes(data) {
    if (typeof data === 'string') return new TextEncoder().encode(data);
    if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    throw new TypeError('send: data must be a string, an ArrayBuffer or a typed array');
  }

  // Roam is a connected session.
  class Roam extends EventTarget {
    // connect signs in. opts: token (required); base (the Roam server's
    // URL, default: where roam.js was loaded from); url and certHashes
    // (default: from the server's config.json); config (a fetched
    // config.json); rootCAs (PEM roots for https:// through the tunnel);
    // timeoutMs (opening the session, default 10000); debug.
    static async connect(opts = {}) {
      if (!opts.token) throw roamError({ code: 'bad-input', message: 'bad input: token is empty' });
      const base = opts.base ? new URL('./', new URL(opts.base, global.location.href)).href : scriptBase;
      const linkP = load({ base });
      let config = opts.config || null;
      const fromServer = !opts.url;
      if (fromServer && !config) config = await fetchConfig({ base });
      const link = await linkP;
      const attempt = (cfg) => {
        const url = opts.url || sessionURL(cfg, base);
        const msg = {
          op: 'connect', url, token: opts.token,
          certHashes: opts.certHashes || (cfg && cfg.cert_hashes) || [],
          timeoutMs: opts.timeoutMs || 10000, rootCAs: opts.rootCAs || '',
          debug: !!opts.debug, pingMs: opts.pingMs || 0,
        };
        return link.call(msg, [], { url }).then((welcome) => ({ welcome, url }));
      };
      let r;
      try {
        r = await attempt(config);
      } catch (e) {
        // The certificate may have rotated since config.json was loaded:
        // fetch it again and retry once.
        if (!(e instanceof RoamError) || e.code !== 'handshake' || !fromServer) throw e;
        config = await fetchConfig({ base });
        r = await attempt(config);
      }
      if (link.instance) link.instance._closed({ code: 'closed', message: 'replaced by a new session' });
      const roam = new Roam(link, r.welcome, r.url, config);
      link.instance = roam;
      global.roamTimings.connected = performance.now();
      return roam;
    }

    constructor(link, welcome, url, config) {
      super();
      this._link = link;
      this.welcome = welcome; // {server, routes, max_flows}
      this.url = url;
      this.config = config;
      this.status = { state: 'connected', rtt_ms: 0, up: 0, down: 0, flows: 0 };
      this.error = null;
      this.onstatus = null;
      this.onclose = null;
      this.closed = new Promise((res) => { this._resolveClosed = res; });
    }

    _status(s) {
      if (this.status.state !== 'connected') return;
      this.status = s;
      if (this.onstatus) this.onstatus(s);
      this.dispatchEvent(new CustomEvent('status', { detail: s }));
    }

    _closed(info) {
      if (this.status.state !== 'connected') return;
      this.status = Object.assign({}, this.status, { state: 'disconnected' });
      this.error = info && info.code && info.code !== 'closed' ? roamError(info, { url: this.url }) : null;
      if (this._link.instance === this) this._link.instance = null;
      if (this.onclose) this.onclose(this.error);
      this.dispatchEvent(new CustomEvent('close', { detail: this.error }));
      this._resolveClosed(this.error);
    }

    // close ends the session.
    async close() {
      if (this.status.state !== 'connected') return;
      await this._link.call({ op: 'disconnect' }, []);
      this._closed(null);
    }

    // stats asks the worker for fresh counters: {state, rtt_ms, up, down,
    // flows}.
    stats() {
      return this._link.call({ op: 'stats' }, []);
    }

    // fetch is window.fetch through the tunnel: HTTP/1.1 from the Go
    // client over a flow the server dials. It resolves with a Response
    // once the headers arrived (its body streams) and rejects with a
    // RoamError (or an AbortError for init.signal).
    async fetch(input, init = {}) {
      const req = new Request(input, init);
      // new Headers keeps names a Request drops (Cookie, ...): the worker
      // sends them as given.
      const hdrs = new Headers(init.headers !== undefined ? init.headers : (input instanceof Request ? input.headers : undefined));
      if (!hdrs.has('content-type') && req.headers.has('content-type')) hdrs.set('content-type', req.headers.get('content-type'));
      let body = null;
      if (req.body) body = new Uint8Array(await req.arrayBuffer());
      const signal = init.signal || (input instanceof Request ? input.signal : null);
      const link = this._link;
      const dst = hostOf(req.url);
      const t0 = performance.now();
      return new Promise((resolve, reject) => {
        if (signal && signal.aborted) {
          reject(signal.reason || new DOMException('aborted', 'AbortError'));
          return;
        }
        const id = link.nextId++;
        let controller = null;
        let unacked = 0;
        let settled = false;
        const done = () => link.handlers.delete(id);
        const ack = () => {
          if (unacked > 0) {
            link.post({ op: 'ack', id, n: unacked });
            unacked = 0;
          }
        };
        const fail = (err) => {
          done();
          if (!settled) { settled = true; reject(err); } else if (controller) {
            try { controller.error(err); } catch (e) { /* closed */ }
          }
        };
        link.handlers.set(id, {
          head: (j) => {
            const h = JSON.parse(j);
            global.roamTimings.lastFetchHead = performance.now() - t0;
            const nullBody = [101, 103, 204, 205, 304].includes(h.status) || req.method === 'HEAD';
            let stream = null;
            if (!nullBody) {
              stream = new ReadableStream({
                start(c) { controller = c; },
                pull() { ack(); },
                cancel() { done(); link.post({ op: 'abort', id }); },
              }, new ByteLengthQueuingStrategy({ highWaterMark: QUEUE_BYTES }));
            }
            const headers = new Headers();
            for (const [k, v] of h.headers) {
              try { headers.append(k, v); } catch (e) { /* a value the browser rejects */ }
            }
            let resp;
            try {
              try {
                resp = new Response(stream, { status: h.status, statusText: h.statusText, headers });
              } catch (e) {
                // A reason phrase the browser rejects (not Latin-1, say):
                // the status code alone will do.
                resp = new Response(stream, { status: h.status, headers });
              }
            } catch (e) {
              link.post({ op: 'abort', id });
              fail(roamError({ code: 'protocol', message: `HTTP status ${h.status} cannot be a Response: ${e.message}` }, { dst }));
              return;
            }
            Object.defineProperty(resp, 'url', { value: h.url });
            Object.defineProperty(resp, 'redirected', { value: h.redirected });
            settled = true;
            if (nullBody) { done(); link.post({ op: 'abort', id }); }
            resolve(resp);
          },
          data: (u8) => {
            if (!controller) return;
            controller.enqueue(u8);
            unacked += u8.byteLength;
            if (controller.desiredSize > 0) ack();
          },
          end: () => {
            done();
            global.roamTimings.lastFetchEnd = performance.now() - t0;
            if (controller) controller.close();
          },
          error: (j) => fail(roamError(JSON.parse(j), { dst })),
        });
        if (signal) {
          signal.addEventListener('abort', () => {
            link.post({ op: 'abort', id });
            fail(signal.reason || new DOMException('aborted', 'AbortError'));
          }, { once: true });
        }
        link.post({
          op: 'fetch', id, url: req.url, method: req.method, headers: [...hdrs],
          body, redirect: init.redirect || req.redirect,
        }, body ? [body.buffer] : []);
      });
    }

    // dial opens a TCP flow to host:port through the server and resolves
    // with a RoamConn once the server connected.
    dial(host, port) {
      const link = this._link;
      const conn = new RoamConn(link, `${host}:${port}`);
      const id = link.nextId++;
      conn._id = id;
      return new Promise((resolve, reject) => {
        let open = false;
        link.handlers.set(id, {
          result: () => { open = true; resolve(conn); },
          error: (j) => {
            const err = roamError(JSON.parse(j), { dst: conn.remote });
            if (open) conn._end(err);
            else { link.handlers.delete(id); reject(err); }
          },
          data: (u8) => conn._data(u8),
          end: () => conn._end(null),
          sent: (j) => conn._sent(JSON.parse(j).seq),
        });
        link.post({ op: 'dial', id, host: String(host), port: Number(port) });
      });
    }
  }

  // RoamConn is a raw TCP flow: send bytes, receive chunks (onmessage or
  // for await ... of conn), closeWrite (FIN), close.
  class RoamConn {
    constructor(link, remote) {
      this._link = link;
      this._id = 0;
      this.remote = remote;
      this._seq = 0;
      this._sends = new Map(); // seq → resolve
      this._queue = []; // chunks not yet consumed by an iterator
      this._waiter = null;
      this._done = false;
      this.error = null;
      this.onmessage = null; // (Uint8Array) => void
      this.onclose = null; // (RoamError|null) => void
      this.closed = new Promise((res) => { this._resolveClosed = res; });
    }

    _data(u8) {
      if (this.onmessage) {
        this._link.post({ op: 'ack', id: this._id, n: u8.byteLength });
        this.onmessage(u8);
        return;
      }
      this._queue.push(u8);
      this._wake();
    }

    _end(err) {
      if (this._done) return;
      this._done = true;
      this.error = err;
      if (err) {
        for (const [, s] of this._sends) s.reject(err);
        this._sends.clear();
        this._link.handlers.delete(this._id);
      }
      this._wake();
      if (this.onclose) this.onclose(err);
      this._resolveClosed(err);
    }

    _sent(seq) {
      const s = this._sends.get(seq);
      if (s) { this._sends.delete(seq); s.resolve(); }
    }

    _wake() {
      if (this._waiter) { const w = this._waiter; this._waiter = null; w(); }
    }

    // send writes data (a string is UTF-8 encoded); it resolves once the
    // bytes were handed to the flow.
    send(data) {
      if (this._closedLocally || (this._done && this.error)) return Promise.reject(this.error || new RoamError('closed', 'The connection is closed.'));
      const bytes = toBytes(data);
      const seq = ++this._seq;
      return new Promise((resolve, reject) => {
        this._sends.set(seq, { resolve, reject });
        this._link.post({ op: 'send', id: this._id, seq, data: bytes }, [bytes.buffer]);
      });
    }

    // closeWrite half-closes: the destination reads EOF; receiving goes on.
    closeWrite() {
      this._link.post({ op: 'closeWrite', id: this._id });
    }

    // close ends the flow after the data sent so far.
    close() {
      if (this._closedLocally) return;
      this._closedLocally = true;
      this._link.post({ op: 'close', id: this._id });
      this._link.handlers.delete(this._id);
      this._end(null);
    }

    async * [Symbol.asyncIterator]() {
      for (;;) {
        if (this._queue.length) {
          const u8 = this._queue.shift();
          this._link.post({ op: 'ack', id: this._id, n: u8.byteLength });
          yield u8;
          continue;
        }
        if (this._done) {
          if (this.error) throw this.error;
          return;
        }
        await new Promise((res) => { this._waiter = res; });
      }
    }
  }

  global.roamTimings = global.roamTimings || {};
  global.Roam = Roam;
  Roam.load = load;
  Roam.fetchConfig = fetchConfig;
  Roam.RoamError = RoamError;
  Roam.RoamConn = RoamConn;
})(window);
