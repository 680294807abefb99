// worker.js: the Dedicated Worker that runs Roam's Go client (roam.wasm).
// roam.js starts it; it loads wasm_exec.js (Go's loader) and wt.js (the
// WebTransport adapter), fetches and starts roam.wasm, and passes messages
// between the page and Go:
//
//   page → Go: every message is handed to self.roamHandle (set by Go);
//              messages that arrive before Go is ready are queued.
//   Go → page: Go calls self.roamPost(op, id, payload); a Uint8Array
//              payload is posted as {op, id, data} with its buffer
//              transferred, anything else as {op, id, json}.
//   worker → page: {op: 'ready'} once Go runs, {op: 'fatal', code,
//              message} if it cannot (code 'wasm-missing' for a 404).
'use strict';

const base = self.roamBase || new URL('./', self.location.href).href;

function fatal(code, message) {
  postMessage({ op: 'fatal', code, message });
}

const pending = [];
let goReady = false;

self.onmessage = (e) => {
  if (goReady) self.roamHandle(e.data);
  else pending.push(e.data);
};

self.roamGoReady = () => {
  goReady = true;
  postMessage({ op: 'ready', ms: performance.now() });
  for (const m of pending.splice(0)) self.roamHandle(m);
};

self.roamPost = (op, id, payload) => {
  if (payload instanceof Uint8Array) postMessage({ op, id, data: payload }, [payload.buffer]);
  else postMessage({ op, id, json: payload });
};

(async () => {
  try {
    importScripts(base + 'wasm_exec.js', base + 'wt.js');
  } catch (e) {
    fatal('wasm-missing', `cannot load wasm_exec.js or wt.js from ${base}: ${e.message || e}`);
    return;
  }
  let resp;
  try {
    resp = await fetch(base + 'roam.wasm');
  } catch (e) {
    fatal('server-unreachable', `cannot fetch roam.wasm: ${e.message || e}`);
    return;
  }
  if (!resp.ok) {
    fatal(resp.status === 404 ? 'wasm-missing' : 'wasm-load', `roam.wasm: HTTP ${resp.status} ${resp.statusText}`);
    return;
  }
  const go = new Go();
  let instance;
  try {
    if ((resp.headers.get('content-type') || '').startsWith('application/wasm')) {
      ({ instance } = await WebAssembly.instantiateStreaming(resp, go.importObject));
    } else {
      ({ instance } = await WebAssembly.instantiate(await resp.arrayBuffer(), go.importObject));
    }
  } catch (e) {
    fatal('wasm-load', `cannot start roam.wasm: ${e.message || e}`);
    return;
  }
  try {
    await go.run(instance);
    fatal('exited', 'the Go program exited');
  } catch (e) {
    fatal('exited', `the Go program failed: ${e.message || e}`);
  }
})();
