/**
 * The client's errors: one root, connection errors, and a class per problem type the
 * service sends (RFC 9457), each a subclass of its status's class — the Python SDK's
 * table (client/adamhub/_errors.py).
 *
 * Whether a failed request may be sent again follows its problem type: `retryable`
 * (trying again may succeed) and `changedNothing` (the service surely changed nothing).
 */

import type { components } from "./schema.js";

/** An RFC 9457 problem document, with the members its type adds. */
export type Problem = components["schemas"]["Problem"] & Record<string, unknown>;

const ERRORS = "https://adamhub.dev/errors/";

/** The root of every error this client throws. */
export class AdamhubError extends Error {
  override name = "AdamhubError";
}

/** The service could not be reached, or the connection broke before an answer. */
export class APIConnectionError extends AdamhubError {
  override name = "APIConnectionError";
}

/** No answer came within the client's timeout. */
export class APITimeoutError extends APIConnectionError {
  override name = "APITimeoutError";
}

/** The service answered with an error: its status, problem type and document. */
export class APIStatusError extends AdamhubError {
  override name = "APIStatusError";
  static readonly retryable: boolean = false;
  static readonly changedNothing: boolean = false;
  readonly status: number;
  /** The problem type URI (`https://adamhub.dev/errors/…`). */
  readonly type: string;
  readonly problem: Problem;
  readonly headers: Headers;

  constructor(status: number, problem: Problem, headers: Headers) {
    super(String(problem.detail ?? problem.title ?? `HTTP ${status}`));
    this.status = status;
    this.type = String(problem.type ?? "about:blank");
    this.problem = problem;
    this.headers = headers;
  }
}

export class BadRequestError extends APIStatusError {
  override name = "BadRequestError";
}
export class AuthenticationError extends APIStatusError {
  override name = "AuthenticationError";
}
export class PermissionDeniedError extends APIStatusError {
  override name = "PermissionDeniedError";
}
export class QuotaExceededError extends PermissionDeniedError {
  override name = "QuotaExceededError";
}
export class WorkerQuarantinedError extends PermissionDeniedError {
  override name = "WorkerQuarantinedError";
}
export class NotFoundError extends APIStatusError {
  override name = "NotFoundError";
}
export class SessionNotFoundError extends NotFoundError {
  override name = "SessionNotFoundError";
}
export class RequestTimeoutError extends APIStatusError {
  override name = "RequestTimeoutError";
  static override readonly retryable = true;
}
export class ConflictError extends APIStatusError {
  override name = "ConflictError";
}
/** Another writer stepped the session first: nothing changed, trying again is safe. */
export class StepConflictError extends ConflictError {
  override name = "StepConflictError";
  static override readonly retryable = true;
  static override readonly changedNothing = true;
}
/** The gradient was computed at parameters too old for the session's staleness bound. */
export class StaleGradientError extends ConflictError {
  override name = "StaleGradientError";
}
export class SizeChangedError extends ConflictError {
  override name = "SizeChangedError";
}
export class PayloadTooLargeError extends APIStatusError {
  override name = "PayloadTooLargeError";
}
export class UnsupportedMediaTypeError extends APIStatusError {
  override name = "UnsupportedMediaTypeError";
}
export class UnprocessableEntityError extends APIStatusError {
  override name = "UnprocessableEntityError";
}
export class WrongSizeError extends UnprocessableEntityError {
  override name = "WrongSizeError";
}
export class NonFiniteValueError extends UnprocessableEntityError {
  override name = "NonFiniteValueError";
}
export class ValidationFailedError extends UnprocessableEntityError {
  override name = "ValidationFailedError";
}
export class IdempotencyKeyReusedError extends UnprocessableEntityError {
  override name = "IdempotencyKeyReusedError";
}
export class OutlierGradientError extends UnprocessableEntityError {
  override name = "OutlierGradientError";
}
export class RateLimitError extends APIStatusError {
  override name = "RateLimitError";
  static override readonly retryable = true;
  static override readonly changedNothing = true;
}
export class InternalServerError extends APIStatusError {
  override name = "InternalServerError";
}
export class BadGatewayError extends InternalServerError {
  override name = "BadGatewayError";
  static override readonly retryable = true;
}
export class GatewayTimeoutError extends InternalServerError {
  override name = "GatewayTimeoutError";
  static override readonly retryable = true;
}
export class ServiceUnavailableError extends InternalServerError {
  override name = "ServiceUnavailableError";
  static override readonly retryable = true;
}
/** The store did not answer: nothing changed. */
export class StoreUnavailableError extends ServiceUnavailableError {
  override name = "StoreUnavailableError";
  static override readonly changedNothing = true;
}
export class OverloadedError extends ServiceUnavailableError {
  override name = "OverloadedError";
  static override readonly changedNothing = true;
}
/** The write may have been applied: retry with the same Idempotency-Key. */
export class OutcomeUnknownError extends ServiceUnavailableError {
  override name = "OutcomeUnknownError";
}

type ErrorClass = typeof APIStatusError;

const BY_TYPE: Record<string, ErrorClass> = {
  "bad-request": BadRequestError,
  "host-not-allowed": BadRequestError,
  unauthorized: AuthenticationError,
  forbidden: PermissionDeniedError,
  "protected-mode": PermissionDeniedError,
  "quota-exceeded": QuotaExceededError,
  "worker-quarantined": WorkerQuarantinedError,
  "not-found": NotFoundError,
  "session-not-found": SessionNotFoundError,
  "key-not-found": NotFoundError,
  "request-timeout": RequestTimeoutError,
  "step-conflict": StepConflictError,
  "stale-gradient": StaleGradientError,
  "size-changed": SizeChangedError,
  "history-unavailable": ConflictError,
  "payload-too-large": PayloadTooLargeError,
  "unsupported-media-type": UnsupportedMediaTypeError,
  "invalid-request": UnprocessableEntityError,
  "malformed-json": UnprocessableEntityError,
  "invalid-vector": UnprocessableEntityError,
  "wrong-size": WrongSizeError,
  "non-finite-value": NonFiniteValueError,
  "non-finite-update": UnprocessableEntityError,
  "validation-error": ValidationFailedError,
  "outlier-gradient": OutlierGradientError,
  "invalid-checkpoint": UnprocessableEntityError,
  "idempotency-key-reused": IdempotencyKeyReusedError,
  "invalid-header": UnprocessableEntityError,
  "rate-limited": RateLimitError,
  "internal-error": InternalServerError,
  "store-unavailable": StoreUnavailableError,
  overloaded: OverloadedError,
  "outcome-unknown": OutcomeUnknownError,
};

const BY_STATUS: Record<number, ErrorClass> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  408: RequestTimeoutError,
  409: ConflictError,
  413: PayloadTooLargeError,
  415: UnsupportedMediaTypeError,
  422: UnprocessableEntityError,
  429: RateLimitError,
  502: BadGatewayError,
  503: ServiceUnavailableError,
  504: GatewayTimeoutError,
};

/** The class of an error answer: by its problem type, else by its status. */
export function errorClass(status: number, problem: Problem | null): ErrorClass {
  const type = problem?.type;
  if (typeof type === "string" && type.startsWith(ERRORS)) {
    const known = BY_TYPE[type.slice(ERRORS.length)];
    if (known !== undefined) {
      return known;
    }
  }
  return BY_STATUS[status] ?? (status >= 500 ? InternalServerError : APIStatusError);
}
