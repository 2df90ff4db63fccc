export {
  BodyTooLargeError,
  ClientClosedError,
  HttpStatusError,
  type Id,
  isRetryableHttpError,
  RequestError,
} from './errors.js'
export {
  FanOutClient,
  type FanOutClientOptions,
  type FanOutRetryOptions,
  type FetchEachOptions,
  type Fetched,
  type FetchOptions,
} from './FanOutClient.js'
export { type DeclaredQuota, parseRateLimitHeaders, parseRetryAfter } from './headers.js'
