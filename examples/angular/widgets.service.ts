/**
 * An Angular service that fans requests out to a rate-limited API with rx-fanout's core
 * operators. The core imports nothing but `rxjs`, so it bundles for the browser as is.
 *
 * Provide `HttpClient` once in the application, e.g.
 * `bootstrapApplication(App, { providers: [provideHttpClient()] })`.
 *
 * Type-checked in CI against the real `@angular/core` and `@angular/common`
 * (`npm run typecheck` runs `tsc -p examples/angular/tsconfig.json`).
 */
import { HttpClient } from '@angular/common/http'
import { Injectable, inject } from '@angular/core'
import { type Result, rateLimit, ratePool, TokenBucket } from 'rx-fanout'
import { debounceTime, distinctUntilChanged, from, type Observable, switchMap } from 'rxjs'

export interface Widget {
  id: string
  name: string
}

@Injectable({ providedIn: 'root' })
export class WidgetsService {
  private readonly http = inject(HttpClient)

  /**
   * One bucket for the whole app: 10 requests/s with bursts of 20, shared by every call
   * of every method below (the service is a singleton), so together they stay within the
   * API's quota. `bucket.setRate(n)` changes it for everyone, waiting requests included.
   */
  readonly bucket = new TokenBucket({ rate: 10, burst: 20 })

  /**
   * Every user's widgets: at most 8 requests in flight, each started only when the shared
   * bucket grants its token. Results come in completion order; `job.value` is the user id.
   * The first failure errors the stream with a `JobError` and cancels the rest.
   */
  widgets$(userIds: readonly number[]): Observable<Result<number, Widget[]>> {
    return from(userIds).pipe(
      ratePool(
        // The pool's TaskContext also carries an AbortSignal for fetch-style APIs; HttpClient
        // does not need it. The pool subscribes to the Observable that `http.get` returns and
        // unsubscribes from it when the job is cancelled (fail-fast, or the caller
        // unsubscribing), and unsubscribing from an HttpClient request aborts it: the XHR's
        // abort() (or the fetch's AbortController with `withFetch()`).
        (id) => this.http.get<Widget[]>(`/api/users/${encodeURIComponent(id)}/widgets`),
        { concurrency: 8, limiter: this.bucket },
      ),
    )
  }

  /**
   * Search-as-you-type against the same quota. `rateLimit` delays a term until the shared
   * bucket grants a token (it never drops one), and `switchMap` then cancels the previous
   * search, so a request goes out only when the quota allows and a stale one is aborted.
   * The debounce drops the keystrokes in between (`rateLimit` alone would send each one).
   */
  search$(terms$: Observable<string>): Observable<Widget[]> {
    return terms$.pipe(
      debounceTime(150),
      distinctUntilChanged(),
      rateLimit(this.bucket),
      switchMap((term) => this.http.get<Widget[]>('/api/widgets', { params: { q: term } })),
    )
  }
}
