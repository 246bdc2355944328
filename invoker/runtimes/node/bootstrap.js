'use strict';
/**
 * The Node.js worker runtime: a generic "stem cell" that loads one Lambda handler on its
 * INIT frame, then serves invocations one at a time.
 *
 * Plain Node 20, no dependencies. V8 cannot fork once started, so the invoker starts these
 * processes ahead of need (see ./__init__.py for the argv) and specialises one per function
 * version: the INIT frame, not the launch, carries the code directory and the environment.
 * The only argument is the fd of one end of a unix socketpair.
 *
 * Frames, both ways: two big-endian u32 (header length, body length), a JSON header, raw body
 * bytes — the protocol of runtimes/python/bootstrap.py, with three additions: the "ready"
 * frame, "code_dir" and "environment" in INIT (set into process.env over the minimal launch
 * environment before the module loads; a missing code_dir means the working directory), and
 * "fatal" on error frames.
 *
 *   invoker → worker  {"type": "init", "handler": "src/app.handler", "code_dir": "/abs", "environment": {…}}
 *                     {"type": "invoke", "request_id", "deadline_ms", "invoked_function_arn", "attempt"} + event JSON
 *   worker → invoker  {"type": "ready", "pid", "node"}   once, at start, before any other frame
 *                     {"type": "init_ok"} | {"type": "init_error", errorType, errorMessage, stackTrace}
 *                     {"type": "result"} + result JSON
 *                     {"type": "error", errorType, errorMessage, stackTrace}
 *
 * An error frame with "fatal": true (an uncaught exception or an unhandled rejection, as in
 * Lambda) is the worker's last word: it exits right after (129, resp. 128) and must not be reused.
 *
 * Logs: console.* and process.stdout/stderr.write go to fds 1 and 2 with synchronous writes,
 * so every line written during an invocation is in the pipe before its reply is sent, and the
 * invoker attributes it to that request. (Node's own stdout is asynchronous on pipes.)
 *
 * Completion follows Lambda's Node runtime: a returned promise settles the invocation when it
 * settles; callback(err, result) does too, but with context.callbackWaitsForEmptyEventLoop
 * (default true) a success is only reported once the event loop has nothing left to do; a
 * handler that neither returns a promise nor calls back yields null once the loop is empty
 * (an async handler whose promise can no longer settle yields Runtime.NodeJsExit). To observe
 * "empty", the invoker socket is unref'd while the handler runs.
 */

const fs = require('fs');
const net = require('net');
const path = require('path');
const util = require('util');
const Module = require('module');
const { Console } = require('console');
const { Writable } = require('stream');
const { pathToFileURL } = require('url');

/** Lambda's limit on a synchronous response (the Python runtime's MAX_RESPONSE_BYTES). */
const MAX_RESPONSE_BYTES = 6 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);
const THIS_FILE = __filename;
const EXIT_UNCAUGHT_EXCEPTION = 129;
const EXIT_UNHANDLED_REJECTION = 128;

// ---- logs -------------------------------------------------------------------------------

const pause = new Int32Array(new SharedArrayBuffer(4));

/** Write all of ``data`` to ``fd`` before returning (the pipe may be non-blocking). */
function writeAll(fd, data) {
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(fd, data, offset, data.length - offset);
    } catch (err) {
      if (err.code === 'EAGAIN') {
        Atomics.wait(pause, 0, 0, 1); // the invoker is behind: wait for it to read
        continue;
      }
      return; // EPIPE, EBADF: nobody reads this stream any more; drop rather than fail the call
    }
  }
}

function toBuffer(chunk, encoding) {
  if (typeof chunk === 'string') return Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8');
  if (Buffer.isBuffer(chunk)) return chunk;
  if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk));
}

/** A stand-in for process.stdout/stderr whose writes reach the fd before they return. */
function syncStream(fd) {
  const stream = new Writable({
    write(chunk, encoding, callback) {
      writeAll(fd, toBuffer(chunk, encoding));
      callback();
    },
  });
  stream.write = function write(chunk, encoding, callback) {
    if (typeof encoding === 'function') [callback, encoding] = [encoding, undefined];
    writeAll(fd, toBuffer(chunk, encoding));
    if (typeof callback === 'function') process.nextTick(callback);
    return true;
  };
  stream._destroy = (err, callback) => callback(err); // like Node's stdio: never closes the fd
  Object.assign(stream, { fd, isTTY: false, columns: undefined });
  stream.getColorDepth = () => 1;
  stream.hasColors = () => false;
  return stream;
}

function installLogs() {
  const stdout = syncStream(1);
  const stderr = syncStream(2);
  // Before anything touches the lazy originals, which would put fds 1 and 2 into libuv's
  // (non-blocking, asynchronous) hands.
  for (const [name, stream] of [['stdout', stdout], ['stderr', stderr]]) {
    Object.defineProperty(process, name, { configurable: true, enumerable: true, get: () => stream });
  }
  const logger = new Console({ stdout, stderr, colorMode: false });
  for (const key of Object.keys(console)) {
    if (typeof logger[key] === 'function') console[key] = logger[key];
  }
}

// ---- frames -----------------------------------------------------------------------------

/** Frame I/O on the socket shared with the invoker. */
class Channel {
  constructor(fd) {
    this.socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: false });
    this.chunks = [];
    this.buffered = 0;
    this.frames = [];
    this.waiter = null;
    this.closed = false;
    this.socket.on('data', (chunk) => this._onData(chunk));
    const onClose = () => {
      this.closed = true;
      this._wake();
    };
    this.socket.on('end', onClose);
    this.socket.on('close', onClose);
    this.socket.on('error', onClose);
  }

  _take(size) {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
    const taken = all.subarray(0, size);
    const rest = all.subarray(size);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return taken;
  }

  _onData(chunk) {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.buffered < 8) break;
      const head = this.chunks[0].length >= 8 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
      const headerLength = head.readUInt32BE(0);
      const bodyLength = head.readUInt32BE(4);
      if (this.buffered < 8 + headerLength + bodyLength) break;
      const frame = this._take(8 + headerLength + bodyLength);
      const header = JSON.parse(frame.toString('utf8', 8, 8 + headerLength));
      this.frames.push([header, frame.subarray(8 + headerLength)]);
    }
    this._wake();
  }

  _wake() {
    if (this.waiter && (this.frames.length || this.closed)) {
      const resolve = this.waiter;
      this.waiter = null;
      resolve(this.frames.length ? this.frames.shift() : null);
    }
  }

  /** The next frame as [header, body], or null once the invoker closed the channel. */
  next() {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /** Send a frame; resolves once it is handed to the kernel. */
  send(header, body = EMPTY) {
    const raw = Buffer.from(JSON.stringify(header), 'utf8');
    const head = Buffer.alloc(8);
    head.writeUInt32BE(raw.length, 0);
    head.writeUInt32BE(body.length, 4);
    // Logs were written synchronously, so they are in the pipe before this frame leaves.
    return new Promise((resolve) => this.socket.write(Buffer.concat([head, raw, body]), () => resolve()));
  }
}

// ---- errors -----------------------------------------------------------------------------

function isErrorLike(value) {
  return util.types.isNativeError(value) || value instanceof Error ||
    (value && typeof value.name === 'string' && typeof value.message === 'string' && typeof value.stack === 'string');
}

/** The stack as lines, without this runtime's frames (as the Python runtime does). */
function stackLines(stack) {
  return typeof stack === 'string' ? stack.split('\n').filter((line) => !line.includes(THIS_FILE)) : [];
}

/** A thrown or rejected value as Lambda reports it: errorType, errorMessage, stackTrace. */
function describe(value) {
  try {
    if (isErrorLike(value)) {
      const errorType = (typeof value.name === 'string' && value.name) || value.constructor?.name || 'Error';
      return { errorType, errorMessage: String(value.message), stackTrace: stackLines(value.stack) };
    }
    let message;
    try {
      message = String(value);
    } catch (_) {
      message = util.inspect(value);
    }
    return { errorType: typeof value, errorMessage: message, stackTrace: [] };
  } catch (_) {
    return {
      errorType: 'handled',
      errorMessage: 'callback called with Error argument, but there was a problem while retrieving one or ' +
        'more of its message, name, and stack',
      stackTrace: [],
    };
  }
}

function frame(kind, errorType, errorMessage, stackTrace = []) {
  return { type: kind, errorType, errorMessage, stackTrace };
}

function rejectionError(reason) {
  let message;
  try {
    message = String(reason);
  } catch (_) {
    message = util.inspect(reason);
  }
  const stack = isErrorLike(reason) ? stackLines(reason.stack) : [];
  return { errorType: 'Runtime.UnhandledPromiseRejection', errorMessage: message, stackTrace: stack };
}

// ---- loading the handler ----------------------------------------------------------------

const HANDLER_EXPR = /^([^.]*)\.(.*)$/;

function nearestPackageIsModule(directory) {
  for (let dir = directory; ; dir = path.dirname(dir)) {
    if (dir.endsWith(`${path.sep}node_modules`)) return false;
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest)) {
      try {
        return JSON.parse(fs.readFileSync(manifest, 'utf8')).type === 'module';
      } catch (_) {
        return false;
      }
    }
    if (dir === path.dirname(dir)) return false;
  }
}

/** Load the module the way Lambda does: .js (CommonJS unless "type": "module"), .mjs, .cjs, then require(). */
async function loadModule(codeDir, moduleRoot, name) {
  const base = path.resolve(codeDir, moduleRoot, name);
  const isFile = (file) => {
    try {
      return fs.statSync(file).isFile();
    } catch (_) {
      return false;
    }
  };
  if (isFile(`${base}.js`)) {
    return nearestPackageIsModule(path.dirname(base)) ? import(pathToFileURL(`${base}.js`).href) : require(`${base}.js`);
  }
  if (isFile(`${base}.mjs`)) return import(pathToFileURL(`${base}.mjs`).href);
  if (isFile(`${base}.cjs`)) return require(`${base}.cjs`);
  if (fs.existsSync(base)) return require(base); // an extensionless file, or a directory with index.js
  // A package in node_modules (the code's own, or NODE_PATH's).
  return require(require.resolve(name, { paths: [path.resolve(codeDir, moduleRoot), codeDir] }));
}

/** Specialise this process: environment, working directory, the handler. Returns {handler} or {error}. */
async function specialise(init) {
  const handlerName = String(init.handler || '');
  const environment = init.environment || {};
  for (const [key, value] of Object.entries(environment)) process.env[key] = String(value);
  // Module resolution read NODE_PATH when this process started, before it had one.
  if ('NODE_PATH' in environment) Module._initPaths();
  const codeDir = init.code_dir ? String(init.code_dir) : process.cwd();
  try {
    process.chdir(codeDir);
  } catch (err) {
    return { error: frame('init_error', 'Runtime.InvalidCodeDirectory', `Cannot use code directory '${codeDir}': ${err.message}`) };
  }
  if (handlerName.includes('..')) {
    return {
      error: frame('init_error', 'Runtime.MalformedHandlerName',
        `'${handlerName}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`),
    };
  }
  const baseName = path.basename(handlerName);
  const moduleRoot = handlerName.slice(0, handlerName.length - baseName.length);
  const match = baseName.match(HANDLER_EXPR);
  if (!match) {
    return { error: frame('init_error', 'Runtime.MalformedHandlerName', `Bad handler '${handlerName}': expected file.export`) };
  }
  const [, moduleName, exportPath] = match;
  let loaded;
  try {
    loaded = await loadModule(codeDir, moduleRoot, moduleName);
  } catch (err) {
    const described = describe(err);
    if (err instanceof SyntaxError) {
      return { error: frame('init_error', 'Runtime.UserCodeSyntaxError', `SyntaxError: ${described.errorMessage}`, described.stackTrace) };
    }
    if (err && (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND')) {
      // Node names this file in the require stack; the user's files are what matter.
      const message = String(err.message).split('\n').filter((line) => !line.includes(THIS_FILE)).join('\n')
        .replace(/\nRequire stack:$/, '');
      return { error: frame('init_error', 'Runtime.ImportModuleError', `Error: ${message}`, described.stackTrace) };
    }
    // Anything else the module threw while loading is reported as itself, as Lambda does.
    return { error: { type: 'init_error', ...described } };
  }
  const handler = exportPath.split('.').reduce((object, key) => object && object[key], loaded);
  if (!handler) {
    return { error: frame('init_error', 'Runtime.HandlerNotFound', `${handlerName} is undefined or not exported`) };
  }
  if (typeof handler !== 'function') {
    return { error: frame('init_error', 'Runtime.HandlerNotFound', `${handlerName} is not a function`) };
  }
  return { handler };
}

// ---- one invocation ---------------------------------------------------------------------

/** Turn the handler's outcome into the reply [header, body]. */
function reply(outcome) {
  if (outcome.error) return [outcome.error, EMPTY];
  let text;
  try {
    text = JSON.stringify(outcome.value === undefined ? null : outcome.value);
  } catch (err) {
    return [frame('error', 'Runtime.MarshalError', `Unable to marshal response: ${describe(err).errorMessage}`), EMPTY];
  }
  const out = Buffer.from(text === undefined ? 'null' : text, 'utf8');
  if (out.length > MAX_RESPONSE_BYTES) {
    return [frame('error', 'Function.ResponseSizeTooLarge',
      `Response payload size (${out.length} bytes) exceeded maximum allowed payload size (${MAX_RESPONSE_BYTES} bytes).`), EMPTY];
  }
  return [{ type: 'result' }, out];
}

/**
 * Run the handler; resolves exactly once with {value} | {error: frame} | {error: frame, exitCode}
 * (the last when an uncaught error ended it: ``setActive`` installs the hook that the
 * process-wide listeners call).
 */
function runHandler(handler, event, header, channel, setActive) {
  return new Promise((resolve) => {
    let settled = false;
    let waitsForEmptyLoop = true;
    let onEmptyLoop = null;
    const isAsync = handler.constructor && handler.constructor.name === 'AsyncFunction';

    const settle = (outcome) => {
      if (settled) return;
      settled = true;
      process.removeListener('beforeExit', emptyLoop);
      setActive(null);
      channel.socket.ref();
      resolve(outcome);
    };
    const succeed = (value) => settle({ value });
    const fail = (err) => settle({ error: { type: 'error', ...describe(err) } });
    function emptyLoop() {
      if (onEmptyLoop) {
        onEmptyLoop();
      } else if (isAsync) {
        settle({
          error: frame('error', 'Runtime.NodeJsExit',
            'The event loop became empty before the handler\'s promise settled: a Promise that can never settle?'),
        });
      } else {
        succeed(null); // neither a promise nor a callback: Lambda answers null
      }
    }

    // The legacy context methods complete at once; the callback waits for an empty loop.
    let completed = false;
    const once = (fn) => (...args) => {
      if (!completed) {
        completed = true;
        fn(...args);
      }
    };
    const done = (err, value) => (err !== undefined && err !== null ? fail(err) : succeed(value));
    const callback = once((err, value) => {
      if (err !== undefined && err !== null) return fail(err);
      if (!waitsForEmptyLoop) return succeed(value);
      onEmptyLoop = () => setImmediate(() => succeed(value));
      return undefined;
    });

    const env = process.env;
    const deadline = Number(header.deadline_ms);
    const context = {
      get callbackWaitsForEmptyEventLoop() {
        return waitsForEmptyLoop;
      },
      set callbackWaitsForEmptyEventLoop(value) {
        waitsForEmptyLoop = Boolean(value);
      },
      functionName: env.AWS_LAMBDA_FUNCTION_NAME || '',
      functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
      invokedFunctionArn: header.invoked_function_arn,
      memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128',
      awsRequestId: header.request_id,
      // Lamina's additions: an async invocation keeps its id on every delivery; attempt counts from 1.
      invocationId: header.request_id,
      attempt: Number(header.attempt || 1),
      logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME || '',
      logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME || '',
      identity: undefined,
      clientContext: undefined,
      getRemainingTimeInMillis: () => Math.max(0, Math.floor(deadline - Date.now())),
      done: once(done),
      succeed: once((value) => done(null, value)),
      fail: once((err) => done(err === undefined || err === null ? 'handled' : err)),
    };

    setActive((error, exitCode) => settle({ error: { type: 'error', ...error, fatal: true }, exitCode }));
    // Unref'd, the invoker socket no longer keeps the loop alive, so 'beforeExit' tells us
    // when the handler has nothing left to do (Lambda's callbackWaitsForEmptyEventLoop).
    channel.socket.unref();
    process.on('beforeExit', emptyLoop);
    try {
      const result = handler(event, context, callback);
      if (result && typeof result.then === 'function') {
        result.then(
          once(succeed),
          once((err) => fail(err === undefined || err === null ? 'handled' : err)),
        );
      }
    } catch (err) {
      once(fail)(err);
    }
  });
}

// ---- the loop ---------------------------------------------------------------------------

/**
 * Run this runtime's own hot paths once while the process is still generic (V8 compiles
 * lazily and the module loader's first use is slow), then announce readiness: the first
 * frame a stem cell sends is {"type": "ready"}. Nothing here is visible to user code.
 */
async function warmUp(channel) {
  const fake = path.join(__dirname, '__warm_up__.js');
  const warm = new Module(fake, null);
  warm.filename = fake;
  warm.paths = Module._nodeModulePaths(__dirname);
  warm._compile('module.exports = async (event) => event;', fake);
  require.resolve(THIS_FILE);
  fs.readFileSync(THIS_FILE, 'utf8');
  nearestPackageIsModule(__dirname);
  describe(new Error('warm-up'));
  reply({ value: await warm.exports({ warm: [1, 'up', null] }) });
  JSON.parse('{"type": "invoke", "request_id": "-"}');
  await channel.send({ type: 'ready', pid: process.pid, node: process.version });
}

async function main() {
  const fd = Number(process.argv[2]);
  process.argv.splice(2); // the user's code sees [node, this file], as under Lambda
  installLogs();
  const channel = new Channel(fd);

  // Uncaught errors belong to whatever is running (INIT or an invocation), which then ends
  // the process as Lambda's runtime does; between invocations they just end it.
  let active = null;
  const setActive = (hook) => {
    active = hook;
  };
  process.on('uncaughtException', (err) => {
    console.error('Uncaught Exception', err);
    if (active) return active(describe(err), EXIT_UNCAUGHT_EXCEPTION);
    return process.exit(EXIT_UNCAUGHT_EXCEPTION);
  });
  process.on('unhandledRejection', (reason) => {
    console.error('Unhandled Promise Rejection', reason);
    if (active) return active(rejectionError(reason), EXIT_UNHANDLED_REJECTION);
    return process.exit(EXIT_UNHANDLED_REJECTION);
  });

  await warmUp(channel);
  const first = await channel.next();
  if (first === null) process.exit(0);
  const initOutcome = await new Promise((resolve) => {
    setActive((error, exitCode) => resolve({ error: { type: 'init_error', ...error, fatal: true }, exitCode }));
    specialise(first[0]).then(resolve, (err) => resolve({ error: { type: 'init_error', ...describe(err) } }));
  });
  setActive(null);
  if (initOutcome.error) {
    await channel.send(initOutcome.error);
    process.exit(initOutcome.exitCode || 0);
  }
  const { handler } = initOutcome;
  await channel.send({ type: 'init_ok' });

  for (;;) {
    const next = await channel.next();
    if (next === null) process.exit(0);
    const [header, body] = next;
    let event;
    try {
      event = body.length ? JSON.parse(body.toString('utf8')) : {};
    } catch (err) {
      await channel.send(frame('error', 'Runtime.UnmarshalError', `Unable to unmarshal input: ${err.message}`));
      continue;
    }
    const outcome = await runHandler(handler, event, header, channel, setActive);
    const [replyHeader, replyBody] = reply(outcome);
    await channel.send(replyHeader, replyBody);
    if (outcome.exitCode) process.exit(outcome.exitCode);
  }
}

main();
