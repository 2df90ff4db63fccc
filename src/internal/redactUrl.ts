/**
 * A URL fit for an error message or a log line: the password (and a user name given with
 * one) replaced by `***`. Works on strings that are not quite URLs too, since those are
 * exactly the ones that end up echoed in option errors.
 */
export function redactUrl(url: string): string {
  // scheme://user:password@host… or scheme://password@host… (Redis's requirepass form).
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^@/?#]*)@/i, (_, scheme: string, auth: string) =>
    auth.includes(':') ? `${scheme}${auth.slice(0, auth.indexOf(':'))}:***@` : `${scheme}***@`,
  )
}
