// wt.js: the WebTransport adapter that the Go program (roam.wasm) calls
// from the Dedicated Worker. It exists to batch across the Go↔JS boundary:
// every promise Go awaits costs ~23 µs, so instead of Go awaiting
// reader.read() per chunk, a JS pump per stream reads ahead into a queue
// and Go takes everything queued with one synchronous call, waiting (one
// callback) only when the queue is empty. Writes are handed over without
// awaiting each promise; Go waits only when more than WRITE_HIGH bytes are
// not yet accepted by the browser.
//
// Go calls roamWT.init(wake) once with its one reused callback
// wake(kind, id, ok, value): kind 0 = stream id readable, 1 = stream id
// writable, 2 = promise token id settled (ok, value).
'use strict';

(() => {
  const READ_HIGH = 1 << 20; // stop reading ahead when this much is queued for Go
  const WRITE_HIGH = 1 << 20; // Go's Write waits while this much is unaccepted

  let wake = null;

  // errInfo describes an error as [kind, message]: 'reset' (the peer reset
  // the stream), 'session' (the session ended) or 'other'.
  function errInfo(e) {
    if (e && e.name === 'WebTransportError') {
      if (e.source === 'stream') {
        return ['reset', `stream reset by the server (code ${e.streamErrorCode ?? 0})`];
      }
      return ['session', e.message || 'session closed'];
    }
    if (e && e.name === 'AbortError') return ['closed', e.message || 'aborted'];
    return ['other', String((e && e.message) || e)];
  }

  class Stream {
    constructor(id, bidi) {
      this.id = id;
      this.reader = bidi.readable.getReader();
      this.writer = bidi.writable.getWriter();
      this.q = []; // Uint8Array chunks read ahead
      this.qbytes = 0;
      this.eof = false;
      this.rerr = null; // read error
      this.werr = null; // write error
      this.readClosed = false; // cancelRead or abort
      this.writeClosed = false; // closeWrite or abort
      this.readWaiting = false; // Go waits for take()
      this.writeWaiting = false; // Go waits for writable()
      this.inflight = 0; // bytes written, not yet accepted
      this.resume = null; // resumes the pump once Go took data
      this.pump();
    }

    async pump() {
      try {
        for (;;) {
          if (this.qbytes >= READ_HIGH) await new Promise((r) => { this.resume = r; });
          if (this.readClosed) return;
          const { value, done } = await this.reader.read();
          if (done) { this.eof = true; break; }
          if (value.byteLength === 0) continue;
          this.q.push(value);
          this.qbytes += value.byteLength;
          this.wakeRead();
        }
      } catch (e) {
        if (!this.readClosed) this.rerr = e;
      }
      this.wakeRead();
    }

    wakeRead() {
      if (this.readWaiting) {
        this.readWaiting = false;
        wake(0, this.id);
      }
    }

    wakeWrite() {
      if (this.writeWaiting) {
        this.writeWaiting = false;
        wake(1, this.id);
      }
    }

    // take returns a Uint8Array of at most max bytes (1 ≤ max), or a
    // number: 0 = nothing queued (Go is woken with kind 0 when that
    // changes), 1 = EOF, 2 = error (see error(0)), 3 = closed locally.
    take(max) {
      if (this.qbytes === 0) {
        if (this.readClosed) return 3;
        if (this.rerr) return 2;
        if (this.eof) return 1;
        this.readWaiting = true;
        return 0;
      }
      let out;
      const first = this.q[0];
      if (first.byteLength >= max) {
        out = first.byteLength === max ? first : first.subarray(0, max);
        if (out === first) this.q.shift(); else this.q[0] = first.subarray(max);
      } else if (this.q.length === 1) {
        out = first;
        this.q.length = 0;
      } else {
        const n = Math.min(max, this.qbytes);
        out = new Uint8Array(n);
        let off = 0;
        while (off < n) {
          const c = this.q[0];
          const k = Math.min(c.byteLength, n - off);
          if (k === c.byteLength) {
            out.set(c, off);
            this.q.shift();
          } else {
            out.set(c.subarray(0, k), off);
            this.q[0] = c.subarray(k);
          }
          off += k;
        }
      }
      this.qbytes -= out.byteLength;
      if (this.resume && this.qbytes < READ_HIGH) {
        const r = this.resume;
        this.resume = null;
        r();
      }
      return out;
    }

    // write hands chunk to the browser. It returns 0 = go on, 1 = wait
    // for kind 1 and ask writable() again, 2 = error (see error(1)),
    // 3 = closed locally.
    write(chunk) {
      if (this.writeClosed) return 3;
      if (this.werr) return 2;
      const n = chunk.byteLength;
      this.inflight += n;
      this.writer.write(chunk).then(() => {
        this.inflight -= n;
        if (this.inflight <= WRITE_HIGH / 2) this.wakeWrite();
      }, (e) => {
        this.inflight -= n;
        if (!this.werr && !this.writeClosed) this.werr = e;
        this.wakeWrite();
      });
      return this.writable();
    }

    writable() {
      if (this.writeClosed) return 3;
      if (this.werr) return 2;
      if (this.inflight > WRITE_HIGH) {
        this.writeWaiting = true;
        return 1;
      }
      return 0;
    }

    // error returns [kind, message] of the read (dir 0) or write (dir 1)
    // error.
    error(dir) {
      return errInfo(dir === 0 ? this.rerr : this.werr);
    }

    // closeWrite sends FIN after the data written. Returns as write does.
    closeWrite() {
      if (this.writeClosed) return 3;
      if (this.werr) return 2;
      this.writeClosed = true;
      this.writer.close().catch(() => {});
      return 0;
    }

    // cancelRead stops reading (STOP_SENDING) and drops what is queued.
    cancelRead() {
      if (this.readClosed) return;
      this.readClosed = true;
      this.q.length = 0;
      this.qbytes = 0;
      if (this.resume) { const r = this.resume; this.resume = null; r(); }
      this.reader.cancel().catch(() => {});
    }

    // abort resets both directions.
    abort() {
      if (!this.writeClosed) {
        this.writeClosed = true;
        this.writer.abort().catch(() => {});
      }
      this.cancelRead();
    }
  }

  class Session {
    constructor(wt) {
      this.wt = wt;
      this.closedInfo = null;
      wt.closed.then((info) => {
        this.closedInfo = ['session', info.reason || `session closed (code ${info.closeCode ?? 0})`];
      }, (e) => {
        this.closedInfo = errInfo(e);
      });
    }

    // openStream resolves to a Stream that wakes Go with id.
    async openStream(id) {
      const bidi = await this.wt.createBidirectionalStream();
      return new Stream(id, bidi);
    }

    close(reason) {
      try { this.wt.close({ closeCode: 0, reason: reason || '' }); } catch (e) { /* already closed */ }
    }
  }

  function hexBytes(h) {
    if (!/^([0-9a-fA-F]{2}){32}$/.test(h)) throw new Error(`certificate hash ${JSON.stringify(h)} is not 64 hex digits`);
    const b = new Uint8Array(32);
    for (let i = 0; i < 32; i++) b[i] = parseInt(h.substr(2 * i, 2), 16);
    return b;
  }

  // connect opens a session; it rejects with {code, message}: code
  // 'unsupported' (no WebTransport here), 'bad-config' (URL or hashes),
  // 'no-answer' (nothing within timeoutMs: UDP blocked or server down),
  // 'handshake' (the handshake failed: certificate, origin, or UDP).
  async function connect(url, hashes, timeoutMs) {
    if (typeof WebTransport !== 'function') {
      throw { code: 'unsupported', message: 'this browser has no WebTransport' };
    }
    const opts = {};
    let wt;
    try {
      if (hashes.length) opts.serverCertificateHashes = hashes.map((h) => ({ algorithm: 'sha-256', value: hexBytes(h) }));
      wt = new WebTransport(url, opts);
    } catch (e) {
      throw { code: 'bad-config', message: `cannot open ${url}: ${e.message || e}` };
    }
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject({ code: 'no-answer', message: `no answer from ${url} within ${timeoutMs} ms` }), timeoutMs);
    });
    try {
      await Promise.race([wt.ready, timeout]);
    } catch (e) {
      try { wt.close(); } catch (e2) { /* ignore */ }
      if (e && e.code) throw e;
      throw { code: 'handshake', message: `${url}: ${(e && e.message) || e}` };
    } finally {
      clearTimeout(timer);
    }
    return new Session(wt);
  }

  self.roamWT = {
    init(w) { wake = w; },
    connect,
    // settle calls wake(2, token, ok, value) when p settles.
    settle(p, token) {
      Promise.resolve(p).then((v) => wake(2, token, true, v), (e) => wake(2, token, false, e));
    },
    errInfo,
  };
})();
