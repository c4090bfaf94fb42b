// The TypeScript client against a real adamhub service (tests/e2e/test_typescript_client.py
// starts it, and a proxy that drops answers, and runs `npm test` with their URLs).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Client,
  NotFoundError,
  SessionNotFoundError,
  UnprocessableEntityError,
  WrongSizeError,
  encodeInt8,
  parseRetryAfter,
} from "../dist/index.js";

const baseURL = process.env.ADAMHUB_TEST_BASE_URL;
const lossyURL = process.env.ADAMHUB_TEST_LOSSY_URL;
assert.ok(baseURL && lossyURL, "run through tests/e2e/test_typescript_client.py");

/** torch's Adam in float32, one rounding per operation as the service's kernel does. */
function localAdam(size, { lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8 } = {}) {
  const f = Math.fround;
  const p = new Float32Array(size), m = new Float32Array(size), v = new Float32Array(size);
  let t = 0;
  return (g) => {
    t += 1;
    const oneMinusBeta1 = f(1 - beta1), b2 = f(beta2), oneMinusBeta2 = f(1 - beta2);
    const bc2 = f((1 - beta2 ** t) ** 0.5), e = f(eps), negStep = f(-(lr / (1 - beta1 ** t)));
    for (let i = 0; i < size; i += 1) {
      const newM = f(f(f(g[i] - m[i]) * oneMinusBeta1) + m[i]);
      const newV = f(f(v[i] * b2) + f(f(oneMinusBeta2 * g[i]) * g[i]));
      const denom = f(f(f(Math.sqrt(newV)) / bc2) + e);
      p[i] = f(p[i] + f(f(negStep * newM) / denom));
      m[i] = newM;
      v[i] = newV;
    }
    return p;
  };
}

function gradient(size, seed) {
  const g = new Float32Array(size);
  for (let i = 0; i < size; i += 1) g[i] = Math.sin(seed * 7.31 + i * 0.17) * (1 + (i % 5));
  return g;
}

test("binary steps equal a local Adam bit for bit", async () => {
  const client = new Client({ baseURL });
  const size = 1000;
  const session = await client.createSession({ size, optimizer: { lr: 0.01 } });
  assert.equal(session.t, 0);
  const adam = localAdam(size, { lr: 0.01 });
  let params;
  for (let step = 1; step <= 20; step += 1) {
    const g = gradient(size, step);
    params = await session.step(g, { loss: 1 / step });
    const expected = adam(g);
    assert.ok(params instanceof Float32Array);
    assert.deepEqual(new Uint32Array(params.buffer), new Uint32Array(expected.buffer.slice(0)));
    assert.equal(session.t, step);
    assert.equal(session.lastAppliedT, step);
  }
  assert.deepEqual(await session.params(), params);
  const points = await session.history();
  assert.equal(points.length, 20);
  assert.equal(points[19].loss, 1 / 20);
  await session.update({ optimizer: { lr: 0.02 }, name: "ts" });
  await session.refresh();
  assert.equal(session.resource.name, "ts");
  assert.equal(session.resource.optimizer.lr, 0.02);
  await client.deleteSession(session.id);
});

/** What the service reads from an int8-block4096 body: q × scale / 127 in float32. */
function dequantize(body, n) {
  const blocks = Math.ceil(n / 4096);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const values = new Int8Array(body.buffer, body.byteOffset + 4 * blocks, n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 1) {
    const scale = view.getFloat32(4 * Math.floor(i / 4096), true);
    out[i] = Math.fround(Math.fround(values[i] * scale) / 127);
  }
  return out;
}

test("8-bit steps are a quarter of the bytes, exact on what arrives, with error feedback", async () => {
  const sent = [];
  const recording = (url, init) => {
    if (String(url).endsWith("/step")) sent.push(init.body);
    return fetch(url, init);
  };
  const client = new Client({ baseURL, gradientDtype: "int8", fetch: recording });
  const size = 5000;
  const session = await client.createSession({ size, optimizer: { lr: 0.01 } });
  const adam = localAdam(size, { lr: 0.01 });
  let given = new Float64Array(size), arrived = new Float64Array(size);
  for (let step = 1; step <= 8; step += 1) {
    const g = gradient(size, step);
    const params = await session.step(g);
    const body = sent.at(-1);
    assert.equal(body.byteLength, 4 * 2 + size); // two scales, then one byte a number
    const read = dequantize(body, size);
    assert.deepEqual(new Uint32Array(params.buffer), new Uint32Array(adam(read).buffer.slice(0)));
    for (let i = 0; i < size; i += 1) {
      given[i] += g[i];
      arrived[i] += read[i];
    }
  }
  // What has not arrived yet is the residual the next step sends.
  for (let i = 0; i < size; i += 1) {
    assert.ok(Math.abs(given[i] - arrived[i] - session.errorFeedback[i]) < 1e-3);
  }
  const [body] = encodeInt8(new Float32Array([0, 0, 0]), null);
  assert.deepEqual(Array.from(body), [0, 0, 0, 0, 0, 0, 0]); // a zero block: scale 0, q 0
  await session.delete();
});

test("steps retried through a link that loses answers are applied once", async () => {
  const setup = new Client({ baseURL });
  const session = await setup.createSession({ size: 64, dtype: "float64" });
  const client = new Client({ baseURL: lossyURL, maxRetries: 20, initialRetryDelayMs: 10, maxRetryDelayMs: 200 });
  const lossy = await client.session(session.id);
  const applied = [];
  for (let i = 0; i < 60; i += 1) {
    const params = await lossy.step(Float64Array.from({ length: 64 }, (_, j) => j - i));
    assert.ok(params instanceof Float64Array);
    applied.push(lossy.lastAppliedT);
  }
  assert.deepEqual(applied, Array.from({ length: 60 }, (_, i) => i + 1));
  const again = await setup.session(session.id);
  assert.equal(again.t, 60);
  await again.delete();
});

test("two workers' contributions make one step per round", async () => {
  const setup = new Client({ baseURL });
  const session = await setup.createSession({ size: 8, rounds: { contributions: 2 } });
  const workers = [new Client({ baseURL, worker: "a" }), new Client({ baseURL, worker: "b" })];
  const handles = await Promise.all(workers.map((worker) => worker.session(session.id)));
  const rounds = 5;
  const answers = await Promise.all(
    handles.map(async (handle, w) => {
      const got = [];
      for (let r = 0; r < rounds; r += 1) {
        const params = await handle.step(new Float32Array(8).fill(w + 1), { samples: 1 });
        got.push([handle.lastAppliedT, Array.from(params)]);
      }
      return got;
    }),
  );
  assert.deepEqual(answers[0], answers[1]); // both saw the same parameters each round
  assert.deepEqual(answers[0].map(([t]) => t), [1, 2, 3, 4, 5]);
  // The mean gradient (1.5 everywhere) for 5 Adam steps at lr 1e-3: p = -5e-3 within float32.
  for (const value of answers[0][4][1]) assert.ok(Math.abs(value + 0.005) < 1e-6, String(value));
  await setup.deleteSession(session.id);
});

test("errors are classes by problem type and carry the problem document", async () => {
  const client = new Client({ baseURL });
  await assert.rejects(client.session("s_00000000000000000000000000000000"), (error) => {
    assert.ok(error instanceof SessionNotFoundError && error instanceof NotFoundError);
    assert.equal(error.status, 404);
    assert.equal(error.type, "https://adamhub.dev/errors/session-not-found");
    assert.equal(error.problem.status, 404);
    return true;
  });
  const session = await client.createSession({ size: 4 });
  const raw = await client.request({
    method: "POST",
    path: `/v1/sessions/${session.id}/step`,
    body: new Uint8Array(12),
    headers: { "Adamhub-Dtype": "float32" },
  }).catch((error) => error);
  assert.ok(raw instanceof WrongSizeError && raw instanceof UnprocessableEntityError);
  assert.equal(raw.status, 422);
  assert.match(raw.problem.detail, /4/);
  await assert.rejects(client.createSession({ size: 0 }), UnprocessableEntityError);
  const untouched = await client.session(session.id);
  assert.equal(untouched.t, 0); // the refused step changed nothing
  await session.delete();
});

test("sessions are listed page by page", async () => {
  const client = new Client({ baseURL });
  const tag = `ts${Date.now()}`;
  const made = [];
  for (let i = 0; i < 5; i += 1) made.push((await client.createSession({ size: 2, tags: [tag] })).id);
  const listed = [];
  for await (const session of client.listSessions({ tag, limit: 2 })) listed.push(session.id);
  assert.deepEqual(listed, made);
  for (const id of made) await client.deleteSession(id);
});

test("Retry-After is read as seconds or a date, within 60 s", () => {
  assert.equal(parseRetryAfter("2"), 2000);
  assert.equal(parseRetryAfter("1000"), 60000);
  assert.equal(parseRetryAfter("-3"), 0);
  assert.equal(parseRetryAfter("soon"), null);
  assert.equal(parseRetryAfter(null), null);
  const inTen = new Date(Date.now() + 10_000).toUTCString();
  assert.ok(Math.abs(parseRetryAfter(inTen) - 10_000) < 1500);
});
