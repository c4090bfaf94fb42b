/**
 * adamhub's TypeScript client: Adam as a service from Node ≥ 18 and browsers, with
 * nothing but `fetch`.
 *
 * ```ts
 * import { Client } from "adamhub";
 * const client = new Client({ baseURL: "http://127.0.0.1:8000", apiKey: process.env.ADAMHUB_API_KEY });
 * const session = await client.createSession({ size: 1000, optimizer: { lr: 1e-3 } });
 * const params = await session.step(gradient); // Float32Array in, Float32Array out
 * ```
 *
 * It keeps the Python SDK's promises: a step carries an Idempotency-Key made before its
 * first try, so a retried step is applied once; failed calls are retried on the same
 * statuses and problem types (connection errors, timeouts, 408, 409 step-conflict, 429,
 * 502, 503, 504) with exponential backoff and full jitter, honouring `Retry-After`;
 * errors are classes by problem type, carrying the problem document.
 */

import {
  APIConnectionError,
  APIStatusError,
  APITimeoutError,
  errorClass,
  type Problem,
} from "./errors.js";
import type { components } from "./schema.js";

export * from "./errors.js";
export type { components, paths } from "./schema.js";

type Schemas = components["schemas"];
/** A session as the service describes it. */
export type SessionResource = Schemas["SessionOut"];
/** What a session is made with (every field but `size` or `params` is optional). */
export type CreateSessionOptions = Partial<Omit<Schemas["SessionCreate"], "params">> & {
  params?: number[] | Float32Array | Float64Array;
};
/** What `session.update` may change. */
export type SessionChanges = Partial<Schemas["SessionPatch"]>;
/** One point of a session's history. */
export type HistoryPoint = Schemas["HistoryOut"]["points"][number];
export type Gradient = Float32Array | Float64Array | number[];
export type Vector = Float32Array | Float64Array;

export interface ClientOptions {
  /** The service's root URL (default `http://localhost:8000`). */
  baseURL?: string;
  /** A bearer key (`ahk_…`); none for a service in protected mode on this machine. */
  apiKey?: string;
  /** The name this client's steps are recorded under (default: the key's id). */
  worker?: string;
  /** How gradients travel: `"int8"` sends 8-bit blocks (`int8-block4096`, a quarter of
   * float32's bytes) with error feedback; default: the session's dtype. */
  gradientDtype?: "int8";
  /** Tries after the first (default 3). */
  maxRetries?: number;
  /** The first backoff's ceiling in ms (default 500); it doubles up to `maxRetryDelayMs`. */
  initialRetryDelayMs?: number;
  /** The longest backoff in ms (default 8000). */
  maxRetryDelayMs?: number;
  /** How long one try may take in ms (default 60000). */
  timeoutMs?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

export interface StepOptions {
  /** The examples behind the gradient (a round weights contributions by them). */
  samples?: number;
  /** The worker's loss for this gradient, recorded in the history. */
  loss?: number;
  /** The key that makes a retried step count once (default: made before the first try). */
  idempotencyKey?: string;
  /** Cancels the step (and its retries). */
  signal?: AbortSignal;
}

export interface ListOptions {
  name?: string;
  tag?: string | string[];
  order?: "created_at" | "-created_at" | "updated_at" | "-updated_at";
  /** Sessions per page (the service's default when not set). */
  limit?: number;
}

/** `always`: safe to repeat (reads, and writes with an Idempotency-Key). `unsent`: only
 * when the service surely changed nothing. */
type Retry = "always" | "unsent";

interface Call {
  method: string;
  path: string;
  query?: Record<string, string | string[] | undefined>;
  json?: unknown;
  body?: Uint8Array;
  headers?: Record<string, string>;
  retry?: Retry;
  signal?: AbortSignal | undefined;
}

const BINARY = "application/octet-stream";
const MAX_RETRY_AFTER_MS = 60_000;
const ROUND_WAIT_SECONDS = 30;
// Params up to this many numbers go in the create's JSON; more go as one binary PUT.
const JSON_PARAMS_LIMIT = 100_000;

/** A client of one adamhub service. */
export class Client {
  readonly baseURL: string;
  readonly apiKey: string | undefined;
  readonly worker: string | undefined;
  readonly gradientDtype: "int8" | undefined;
  readonly maxRetries: number;
  readonly initialRetryDelayMs: number;
  readonly maxRetryDelayMs: number;
  readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.baseURL = (options.baseURL ?? "http://localhost:8000").replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.worker = options.worker;
    this.gradientDtype = options.gradientDtype;
    this.maxRetries = options.maxRetries ?? 3;
    if (this.maxRetries < 0) {
      throw new RangeError("maxRetries must be >= 0");
    }
    this.initialRetryDelayMs = options.initialRetryDelayMs ?? 500;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 8000;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Make a session of `size` (zeros, or `init`) or from `params`, with its optimizer,
   * rounds and settings. A retried create makes one session (its Idempotency-Key). */
  async createSession(options: CreateSessionOptions): Promise<Session> {
    const { params, ...rest } = options;
    const body: Record<string, unknown> = { ...rest };
    let large: Float32Array | Float64Array | undefined;
    if (params !== undefined) {
      if (params.length > JSON_PARAMS_LIMIT) {
        large = params instanceof Float64Array ? params : Float32Array.from(params);
        body.size = params.length;
        if (large instanceof Float64Array) {
          body.dtype = body.dtype ?? "float64";
        }
      } else {
        body.params = Array.from(params);
      }
    }
    const response = await this.request({
      method: "POST",
      path: "/v1/sessions",
      json: body,
      headers: { "Idempotency-Key": newKey() },
    });
    const session = new Session(this, (await response.json()) as SessionResource);
    if (large !== undefined) {
      await session.setParams(large);
    }
    return session;
  }

  /** The session `id` (404 `SessionNotFoundError` when there is none the key sees). */
  async session(id: string): Promise<Session> {
    const response = await this.request({ method: "GET", path: sessionPath(id) });
    return new Session(this, (await response.json()) as SessionResource);
  }

  /** Every session the key sees, page by page as they are iterated. */
  async *listSessions(options: ListOptions = {}): AsyncGenerator<Session, void, undefined> {
    let cursor: string | undefined;
    do {
      const response = await this.request({
        method: "GET",
        path: "/v1/sessions",
        query: {
          name: options.name,
          tag: options.tag,
          order: options.order,
          limit: options.limit === undefined ? undefined : String(options.limit),
          cursor,
        },
      });
      const page = (await response.json()) as Schemas["SessionList"];
      for (const resource of page.sessions) {
        yield new Session(this, resource);
      }
      cursor = page.next_cursor ?? undefined;
    } while (cursor !== undefined);
  }

  /** Delete a session and everything stored for it. */
  async deleteSession(id: string): Promise<void> {
    await this.request({ method: "DELETE", path: sessionPath(id) });
  }

  /** Send one call with this client's retries; throws the error class of an error
   * answer. The low-level interface the rest is built on. */
  async request(call: Call): Promise<Response> {
    const url = new URL(this.baseURL + call.path);
    for (const [name, value] of Object.entries(call.query ?? {})) {
      for (const item of value === undefined ? [] : Array.isArray(value) ? value : [value]) {
        url.searchParams.append(name, item);
      }
    }
    const headers: Record<string, string> = { "User-Agent": "adamhub-typescript/0.1.0" };
    if (this.apiKey) {
      headers.Authorization = `Bearer ${this.apiKey}`;
    }
    let body: BodyInit | undefined;
    if (call.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(call.json);
    } else if (call.body !== undefined) {
      headers["Content-Type"] = BINARY;
      body = call.body as Uint8Array<ArrayBuffer>;
    }
    Object.assign(headers, call.headers);
    for (let attempt = 0; ; attempt += 1) {
      const canRetry = attempt < this.maxRetries;
      const timeout = new AbortController();
      const timer = setTimeout(() => timeout.abort(), this.timeoutMs);
      const signal = call.signal === undefined ? timeout.signal : both(call.signal, timeout.signal);
      let response: Response;
      try {
        response = await this.fetchImpl(url, { method: call.method, headers, body, signal });
      } catch (cause) {
        clearTimeout(timer);
        if (call.signal?.aborted) {
          throw call.signal.reason ?? cause;
        }
        const timedOut = timeout.signal.aborted;
        // fetch does not say whether the request went out: only "always" calls retry.
        if (canRetry && (call.retry ?? "always") === "always") {
          await sleep(this.backoff(attempt, null), call.signal);
          continue;
        }
        const Error = timedOut ? APITimeoutError : APIConnectionError;
        throw new Error(`could not reach the adamhub service: ${String(cause)}`, { cause });
      }
      clearTimeout(timer);
      if (response.ok || response.status === 304) {
        return response;
      }
      if (attempt > 0 && call.method === "DELETE" && response.status === 404) {
        return response; // an earlier try deleted it, and its answer was lost
      }
      const problem = await problemOf(response);
      const Class = errorClass(response.status, problem);
      const retryable = (call.retry ?? "always") === "always" ? Class.retryable : Class.retryable && Class.changedNothing;
      if (canRetry && retryable) {
        await sleep(this.backoff(attempt, response), call.signal);
        continue;
      }
      const fallback = {
        type: "about:blank",
        title: response.statusText,
        status: response.status,
        detail: `HTTP ${response.status}`,
        instance: call.path,
        request_id: null,
      };
      throw new Class(response.status, problem ?? fallback, response.headers);
    }
  }

  /** Retry-After when the service sent one, else exponential backoff with full jitter. */
  private backoff(attempt: number, response: Response | null): number {
    const after = parseRetryAfter(response?.headers.get("retry-after") ?? null);
    if (after !== null) {
      return after;
    }
    const ceiling = Math.min(this.maxRetryDelayMs, this.initialRetryDelayMs * 2 ** attempt);
    return Math.random() * ceiling;
  }
}

/** One optimizer session: step it, read and change it. */
export class Session {
  readonly id: string;
  /** The session's step count, as of the last answer. */
  t: number;
  /** The step the last `step` was applied as (a round's step for a contribution). */
  lastAppliedT: number | null = null;
  /** With 8-bit gradients: what rounding has not sent yet, added to the next gradient. */
  errorFeedback: Float32Array | null = null;
  resource: SessionResource;
  private readonly client: Client;

  constructor(client: Client, resource: SessionResource) {
    this.client = client;
    this.resource = resource;
    this.id = resource.id;
    this.t = resource.t;
  }

  get size(): number {
    return this.resource.size;
  }

  get dtype(): "float32" | "float64" {
    return this.resource.dtype;
  }

  /** Apply one gradient; the new parameters (a `Float64Array` for a float64 session).
   * In a rounds session the answer comes when the round closes (the mean of its
   * contributions, one Adam step). */
  async step(gradient: Gradient, options: StepOptions = {}): Promise<Vector> {
    const vector = this.dtype === "float64" ? Float64Array.from(gradient) : Float32Array.from(gradient);
    if (vector.length !== this.size) {
      throw new RangeError(`the gradient has ${vector.length} numbers; the session has ${this.size}`);
    }
    let body = littleEndian(vector);
    let wire: string = this.dtype;
    let feedback: Float32Array | null = null;
    if (this.client.gradientDtype === "int8") {
      [body, feedback] = encodeInt8(vector, this.errorFeedback);
      wire = INT8_BLOCKS;
    }
    const headers: Record<string, string> = {
      Accept: BINARY,
      "Adamhub-Dtype": wire,
      "Idempotency-Key": options.idempotencyKey ?? newKey(),
      "Adamhub-Base-Step": String(this.t),
    };
    if (options.samples !== undefined) {
      headers["Adamhub-Samples"] = String(Math.trunc(options.samples));
    }
    if (options.loss !== undefined && Number.isFinite(options.loss)) {
      headers["Adamhub-Loss"] = String(options.loss);
    }
    if (this.client.worker !== undefined) {
      headers["Adamhub-Worker"] = this.client.worker;
    }
    if (this.resource.rounds) {
      headers.Prefer = `wait=${ROUND_WAIT_SECONDS}`;
    }
    const response = await this.client.request({
      method: "POST",
      path: `${sessionPath(this.id)}/step`,
      body,
      headers,
      signal: options.signal,
    });
    if (feedback !== null) {
      this.errorFeedback = feedback; // the step is taken (or its contribution is in)
    }
    if (response.status === 202) {
      // The contribution is in: wait for its round.
      const pending = (await response.json()) as Schemas["RoundPendingOut"];
      this.t = pending.t;
      for (;;) {
        const params = await this.waitForStep(pending.round, ROUND_WAIT_SECONDS, options.signal);
        if (this.t >= pending.round) {
          this.lastAppliedT = pending.round;
          return params;
        }
      }
    }
    this.t = Number(response.headers.get("Adamhub-Step"));
    this.lastAppliedT = Number(response.headers.get("Adamhub-Applied-Step"));
    return this.vectorOf(response);
  }

  /** The current parameters. */
  async params(): Promise<Vector> {
    return this.waitForStep(undefined, 0, undefined);
  }

  /** Replace the parameters (m, v and t are kept). */
  async setParams(params: Float32Array | Float64Array | number[]): Promise<void> {
    const vector = this.dtype === "float64" ? Float64Array.from(params) : Float32Array.from(params);
    const response = await this.client.request({
      method: "PUT",
      path: `${sessionPath(this.id)}/params`,
      body: littleEndian(vector),
    });
    this.take((await response.json()) as SessionResource);
  }

  /** Change the session's settings (`{ optimizer: { lr: 1e-4 } }`, `name`, `tags`, …). */
  async update(changes: SessionChanges): Promise<void> {
    const response = await this.client.request({
      method: "PATCH",
      path: sessionPath(this.id),
      json: changes,
    });
    this.take((await response.json()) as SessionResource);
  }

  /** Read the session again. */
  async refresh(): Promise<void> {
    const response = await this.client.request({ method: "GET", path: sessionPath(this.id) });
    this.take((await response.json()) as SessionResource);
  }

  /** The history's points (t, time, lr, loss, worker, …), oldest first. */
  async history(options: { afterT?: number; limit?: number } = {}): Promise<HistoryPoint[]> {
    const response = await this.client.request({
      method: "GET",
      path: `${sessionPath(this.id)}/history`,
      query: {
        after_t: options.afterT === undefined ? undefined : String(options.afterT),
        limit: options.limit === undefined ? undefined : String(options.limit),
      },
    });
    return ((await response.json()) as Schemas["HistoryOut"]).points;
  }

  /** Delete the session. */
  async delete(): Promise<void> {
    await this.client.deleteSession(this.id);
  }

  private async waitForStep(minStep: number | undefined, waitSeconds: number, signal: AbortSignal | undefined): Promise<Vector> {
    const response = await this.client.request({
      method: "GET",
      path: `${sessionPath(this.id)}/params`,
      query: minStep === undefined ? {} : { min_step: String(minStep), wait: String(waitSeconds) },
      headers: { Accept: BINARY },
      signal,
    });
    this.t = Number(response.headers.get("Adamhub-Step"));
    return this.vectorOf(response);
  }

  private async vectorOf(response: Response): Promise<Vector> {
    const data = new Uint8Array(await response.arrayBuffer());
    const dtype = response.headers.get("Adamhub-Dtype") ?? this.dtype;
    return fromLittleEndian(data, dtype);
  }

  private take(resource: SessionResource): void {
    this.resource = resource;
    this.t = resource.t;
  }
}

const INT8_BLOCKS = "int8-block4096";
const BLOCK = 4096;

/** An `int8-block4096` body for `gradient` plus the residual of earlier steps, and the
 * residual after it: what the service will read (q × scale / 127 in float32) is
 * subtracted from what was meant. */
export function encodeInt8(
  gradient: Float32Array | Float64Array,
  residual: Float32Array | null,
): [Uint8Array, Float32Array] {
  const f = Math.fround;
  const n = gradient.length;
  const blocks = Math.ceil(n / BLOCK);
  const meant = new Float32Array(n);
  for (let i = 0; i < n; i += 1) meant[i] = f((gradient[i] ?? 0) + (residual?.[i] ?? 0));
  const body = new Uint8Array(4 * blocks + n);
  const view = new DataView(body.buffer);
  const values = new Int8Array(body.buffer, 4 * blocks, n);
  const after = new Float32Array(n);
  for (let b = 0; b < blocks; b += 1) {
    const start = b * BLOCK;
    const stop = Math.min(n, start + BLOCK);
    let scale = 0;
    for (let i = start; i < stop; i += 1) scale = Math.max(scale, Math.abs(meant[i] ?? 0));
    view.setFloat32(4 * b, scale, true);
    for (let i = start; i < stop; i += 1) {
      const value = meant[i] ?? 0;
      const q = scale > 0 ? Math.max(-127, Math.min(127, Math.round((value / scale) * 127))) : 0;
      values[i] = q;
      after[i] = f(value - f(f(q * scale) / 127));
    }
  }
  return [body, after];
}

function sessionPath(id: string): string {
  return `/v1/sessions/${encodeURIComponent(id)}`;
}

function newKey(): string {
  const uuid = globalThis.crypto?.randomUUID?.();
  if (uuid !== undefined) {
    return `ts-${uuid.replaceAll("-", "")}`;
  }
  let key = "ts-";
  for (let i = 0; i < 32; i += 1) {
    key += Math.floor(Math.random() * 16).toString(16);
  }
  return key;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A vector's little-endian bytes (the wire's order; a view when the machine's is). */
function littleEndian(vector: Float32Array | Float64Array): Uint8Array {
  if (LITTLE_ENDIAN) {
    return new Uint8Array(vector.buffer, vector.byteOffset, vector.byteLength);
  }
  const bytes = new Uint8Array(vector.byteLength);
  const view = new DataView(bytes.buffer);
  vector.forEach((value, i) => {
    if (vector instanceof Float64Array) {
      view.setFloat64(i * 8, value, true);
    } else {
      view.setFloat32(i * 4, value, true);
    }
  });
  return bytes;
}

/** A binary answer's numbers (float32, float64, or float16/bfloat16 widened to float32). */
function fromLittleEndian(data: Uint8Array, dtype: string): Vector {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (dtype === "float64") {
    const out = new Float64Array(data.byteLength / 8);
    for (let i = 0; i < out.length; i += 1) out[i] = view.getFloat64(i * 8, true);
    return out;
  }
  if (dtype === "float32") {
    const out = new Float32Array(data.byteLength / 4);
    for (let i = 0; i < out.length; i += 1) out[i] = view.getFloat32(i * 4, true);
    return out;
  }
  const out = new Float32Array(data.byteLength / 2);
  const bits = new DataView(new ArrayBuffer(4));
  for (let i = 0; i < out.length; i += 1) {
    const half = view.getUint16(i * 2, true);
    out[i] = dtype === "bfloat16" ? (bits.setUint32(0, half << 16), bits.getFloat32(0)) : float16(half);
  }
  return out;
}

function float16(half: number): number {
  const sign = half & 0x8000 ? -1 : 1;
  const exponent = (half >> 10) & 0x1f;
  const fraction = half & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

async function problemOf(response: Response): Promise<Problem | null> {
  try {
    const document: unknown = await response.json();
    return document !== null && typeof document === "object" ? (document as Problem) : null;
  } catch {
    return null;
  }
}

/** ms to wait from a Retry-After header (seconds or an HTTP date), within [0, 60 s]. */
export function parseRetryAfter(value: string | null): number | null {
  if (!value) return null;
  let ms = Number(value) * 1000;
  if (Number.isNaN(ms)) {
    const date = Date.parse(value);
    if (Number.isNaN(date)) return null;
    ms = date - Date.now();
  }
  if (!Number.isFinite(ms)) return null;
  return Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/** A signal that aborts when either does (AbortSignal.any is not in Node 18). */
function both(first: AbortSignal, second: AbortSignal): AbortSignal {
  const controller = new AbortController();
  for (const signal of [first, second]) {
    if (signal.aborted) {
      controller.abort(signal.reason);
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}

export { APIStatusError };
