// Unit test of static/wt.js (the WebTransport adapter) under Node, with a
// fake WebTransport. Run by TestWTAdapter: node wt_test.js path/to/wt.js
'use strict';
const fs = require('fs');
const vm = require('vm');

let failed = 0;
function check(name, ok, got) {
  if (!ok) {
    failed++;
    console.log(`FAIL ${name}: got ${JSON.stringify(got)}`);
  }
}
const tick = () => new Promise((r) => setTimeout(r, 0));
const bytes = (v) => (v instanceof Uint8Array ? Array.from(v) : v);

class FakeWT {
  constructor(url, opts) {
    FakeWT.last = this;
    this.url = url;
    this.opts = opts;
    this.streams = [];
    this.ready = FakeWT.ready ? FakeWT.ready() : Promise.resolve();
    this.closed = new Promise((r) => { this._closed = r; });
  }
  async createBidirectionalStream() {
    const s = { written: [], pending: null, holdWrites: false, closedWrite: false, aborted: false, cancelled: false };
    s.readable = new ReadableStream({
      start(c) { s.rc = c; },
      cancel() { s.cancelled = true; },
    });
    s.writable = new WritableStream({
      write(chunk) {
        s.written.push(chunk);
        if (s.holdWrites) return new Promise((r) => { s.pending = r; });
        return undefined;
      },
      close() { s.closedWrite = true; },
      abort() { s.aborted = true; },
    }, { highWaterMark: 1 << 30 });
    this.streams.push(s);
    return s;
  }
  close(info) { this._closed(info); }
}
globalThis.self = globalThis;
globalThis.WebTransport = FakeWT;
vm.runInThisContext(fs.readFileSync(process.argv[2], 'utf8'), { filename: 'wt.js' });

const wakes = [];
self.roamWT.init((kind, id) => wakes.push(`${kind}:${id}`));

(async () => {
  const hash = 'ab'.repeat(32);
  const sess = await self.roamWT.connect('https://h:1/roam/wt', [hash], 1000);
  const h = FakeWT.last.opts.serverCertificateHashes;
  check('hashes passed as bytes', h.length === 1 && h[0].algorithm === 'sha-256' && h[0].value.length === 32 && h[0].value[0] === 0xab, h);

  // Reading: empty, then batched takes, then EOF.
  const st = await sess.openStream(7);
  const f = FakeWT.last.streams[0];
  check('take on an empty queue', st.take(10) === 0, st.take(10));
  f.rc.enqueue(new Uint8Array([1, 2, 3]));
  f.rc.enqueue(new Uint8Array([4, 5]));
  await tick();
  check('one wake for the waiting reader', wakes.join() === '0:7', wakes);
  check('take joins chunks up to max', JSON.stringify(bytes(st.take(4))) === '[1,2,3,4]', null);
  check('take returns the rest', JSON.stringify(bytes(st.take(10))) === '[5]', null);
  f.rc.enqueue(new Uint8Array([6, 7, 8]));
  await tick();
  check('take splits a chunk', JSON.stringify(bytes(st.take(2))) === '[6,7]', null);
  check('take the split rest', JSON.stringify(bytes(st.take(2))) === '[8]', null);
  f.rc.close();
  await tick();
  check('EOF after the data', st.take(10) === 1, null);

  // Writing: pass-through, backpressure and its wake, closeWrite.
  check('write goes on', st.write(new Uint8Array(10)) === 0, null);
  await tick();
  check('written', f.written.length === 1 && f.written[0].length === 10, f.written.length);
  f.holdWrites = true;
  wakes.length = 0;
  let r = st.write(new Uint8Array(600 << 10));
  r = st.write(new Uint8Array(600 << 10));
  check('backpressure over 1 MiB in flight', r === 1, r);
  await tick();
  for (let i = 0; i < 3 && f.pending; i++) {
    f.holdWrites = false;
    const p = f.pending;
    f.pending = null;
    p();
    await tick();
    await tick();
  }
  check('writable wake', wakes.includes('1:7'), wakes);
  check('writable again', st.writable() === 0, st.writable());
  check('closeWrite', st.closeWrite() === 0, null);
  await tick();
  check('FIN sent', f.closedWrite, f);
  check('write after closeWrite', st.write(new Uint8Array(1)) === 3, null);

  // A reset by the server.
  const st2 = await sess.openStream(8);
  const f2 = FakeWT.last.streams[1];
  st2.take(1);
  const e = new Error('reset');
  e.name = 'WebTransportError';
  e.source = 'stream';
  e.streamErrorCode = 5;
  f2.rc.error(e);
  await tick();
  check('take after reset', st2.take(1) === 2, null);
  const info = st2.error(0);
  check('reset kind', info[0] === 'reset' && info[1].includes('code 5'), info);

  // Abort and cancelRead.
  const st3 = await sess.openStream(9);
  const f3 = FakeWT.last.streams[2];
  f3.rc.enqueue(new Uint8Array([1]));
  await tick();
  st3.abort();
  await tick();
  check('abort: reset sent and reading cancelled', f3.aborted && f3.cancelled, f3);
  check('take after abort', st3.take(1) === 3, null);

  // Connect failures.
  const fails = [
    ['bad hash', () => self.roamWT.connect('https://h:1/', ['xyz'], 1000), 'bad-config'],
    ['handshake', () => { FakeWT.ready = () => Promise.reject(new Error('Opening handshake failed.')); return self.roamWT.connect('https://h:1/', [], 1000); }, 'handshake'],
    ['no answer', () => { FakeWT.ready = () => new Promise(() => {}); return self.roamWT.connect('https://h:1/', [], 30); }, 'no-answer'],
  ];
  for (const [name, f, code] of fails) {
    try {
      await f();
      check(name, false, 'connected');
    } catch (err) {
      check(name, err.code === code, err);
    }
  }
  console.log(failed ? `${failed} failed` : 'ok');
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.log('exception', e); process.exit(1); });
