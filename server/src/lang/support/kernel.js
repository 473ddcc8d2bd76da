// sandpool's JavaScript context kernel: runs cells sent on stdin in one
// persistent global scope (like Node's REPL: `var`, functions and top-level
// `let`/`const` survive between cells). A cell arrives as a header line
// "<cell id> <plot format> <artifact nonce> <start time> <length>
// <traceparent> <tracestate>\n" and <length> bytes of code; the traceparent
// is "-" when the run has none, the tracestate is the rest of the line
// (maybe empty). The cell sees them as TRACEPARENT and TRACESTATE, those of
// the run that sent it. Output goes to stdout/stderr as the cell produces
// it; at the end of the cell the kernel writes an artifact report frame and a
// status frame (to both streams). SIGINT interrupts the running cell.
'use strict';
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const { createRequire } = require('module');
const nonce = process.env.SANDPOOL_CONTEXT_NONCE;
const outDir = process.env.SANDPOOL_OUTPUT_DIR || '';
const cwd = process.cwd();
globalThis.require = createRequire(path.join(cwd, 'cell.js'));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;
globalThis.__dirname = cwd;
globalThis.__filename = path.join(cwd, 'cell.js');

const frame = (tag, payload, n, fd) => fs.writeSync(fd, `\x1e${tag}:${n}:${payload}:${n}\x1e`);
let interrupt = null;
process.on('SIGINT', () => {
  if (interrupt) interrupt();
});
// Errors of a cell's leftover async work must not end the context.
process.on('uncaughtException', (e) => console.error(e));
process.on('unhandledRejection', (e) => console.error(e));

function changedSince(t) {
  const walk = (dir) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return false;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (walk(p)) return true;
      } else {
        try {
          if (fs.lstatSync(p).mtimeMs / 1000 >= t) return true;
        } catch {}
      }
    }
    return false;
  };
  return outDir && walk(outDir) ? 1 : 0;
}

let buffer = Buffer.alloc(0);
let waiting = null;
process.stdin.on('data', (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  if (waiting) waiting();
});
process.stdin.on('end', () => process.exit(0));
const more = () => new Promise((resolve) => (waiting = resolve));

async function readCell() {
  let i;
  while ((i = buffer.indexOf(10)) < 0) await more();
  const line = buffer.subarray(0, i).toString();
  const header = line.split(' ');
  buffer = buffer.subarray(i + 1);
  const length = Number(header[4]);
  const tracestate = header.length > 6 ? header.slice(6).join(' ') : '';
  const trace = { TRACEPARENT: header[5] || '-', TRACESTATE: tracestate };
  while (buffer.length < length) await more();
  const code = buffer.subarray(0, length).toString();
  buffer = buffer.subarray(length);
  return { cell: header[0], artNonce: header[2], since: Number(header[3]), code, trace };
}

async function runCell(code, name) {
  let script;
  try {
    script = new vm.Script(code, { filename: name });
  } catch (e) {
    if (!(e instanceof SyntaxError) || !/await/.test(String(e.message))) throw e;
    // Top-level await: run the cell as an async function (its declarations
    // stay inside it).
    script = new vm.Script(`(async () => {\n${code}\n})()`, { filename: name, lineOffset: -1 });
  }
  const result = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (result && typeof result.then === 'function') {
    await new Promise((resolve, reject) => {
      interrupt = () => reject(new Error('Script execution interrupted.'));
      result.then(resolve, reject);
    });
  }
}

(async () => {
  frame('sandpool-ready', String(process.pid), nonce, 2);
  for (let n = 1; ; n++) {
    const { cell, artNonce, since, code, trace } = await readCell();
    process.env.SANDPOOL_RUN_ID = cell;
    for (const [name, value] of Object.entries(trace)) {
      if (value === '' || value === '-') delete process.env[name];
      else process.env[name] = value;
    }
    let status = 0;
    try {
      await runCell(code, `<cell ${n}>`);
    } catch (e) {
      status = /interrupted/.test(String(e && e.message)) ? 130 : 1;
      console.error(e && e.stack ? e.stack : String(e));
    } finally {
      interrupt = null;
    }
    frame('sandpool', changedSince(since), artNonce, 2);
    frame('sandpool-cell', status, nonce, 1);
    frame('sandpool-cell', status, nonce, 2);
  }
})();
