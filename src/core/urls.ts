/**
 * What kaos does with the URLs of a manifest beyond fetching them: which
 * files a `file:` URL may read, and the form of a URL that locks and data
 * keys record. Node's built-ins only: the transfer threads load this module.
 *
 * A manifest is committed and shared, so a line such as `file:///etc/shadow`
 * would copy a file of whoever runs kaos into the object store and into the
 * data its jobs read (and whatever they send on). A `file:` URL may therefore
 * only read inside the project (the directory holding kaos.config.ts) and the
 * directories the config lists in `allowFileUrls`, judged after following
 * symlinks, so that a link inside the project that leads out is refused too.
 *
 * A lock is committed too, so it must not hold credentials; and a token that
 * is rotated, or a URL presigned again, still names the same content, so it
 * must not change the data key. Both record a URL's identity: the URL without
 * its `user:password@` part and without the query parameters that carry
 * credentials or signing data (see `isCredentialParam`).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { ResolvedConfig } from "./types.js";

/** Where `file:` URLs may read: the project, and the directories of `allowFileUrls` (absolute). */
export interface FileUrlScope {
  project: string;
  allowed: readonly string[];
  /** The config file, named in messages as where to widen the scope. */
  configFile?: string;
}

/** The scope a loaded config gives its manifests. */
export function fileUrlScopeOf(config: Pick<ResolvedConfig, "root" | "file" | "allowFileUrls">): FileUrlScope {
  return { project: config.root, allowed: config.allowFileUrls ?? [], configFile: config.file };
}

function isWithin(child: string, dir: string): boolean {
  if (child === dir) return true;
  return child.startsWith(dir.endsWith(path.sep) ? dir : dir + path.sep);
}

function realOrSelf(dir: string): string {
  try {
    return fs.realpathSync(dir);
  } catch {
    return dir;
  }
}

function describeScope(scope: FileUrlScope): string {
  return scope.allowed.length === 0
    ? `the project ${scope.project}`
    : `the project ${scope.project} and allowFileUrls (${scope.allowed.join(", ")})`;
}

/** What a refusal tells the user to do. */
export function widenScopeHint(scope: FileUrlScope): string {
  const config = scope.configFile ?? "kaos.config.ts";
  return `expected a file inside ${describeScope(scope)}; to read from another directory, list it in allowFileUrls in ${config}`;
}

/**
 * Why the file at `file` (an absolute path from a `file:` URL) may not be read,
 * or undefined when it may. A path outside every allowed directory is refused
 * before anything touches it; a path inside is followed through its symlinks
 * and judged again. A missing file is not refused here: reading it says so.
 */
export function fileUrlRefusal(file: string, scope: FileUrlScope): string | undefined {
  const roots = [scope.project, ...scope.allowed];
  const realRoots = roots.map(realOrSelf);
  const lexical = path.resolve(file);
  if (!roots.some((root) => isWithin(lexical, root)) && !realRoots.some((root) => isWithin(lexical, root))) {
    return `${lexical} is outside ${describeScope(scope)}`;
  }
  let real: string;
  try {
    real = fs.realpathSync(lexical);
  } catch {
    return undefined;
  }
  if (!realRoots.some((root) => isWithin(real, root)))
    return `${lexical} leads through a symlink to ${real}, outside ${describeScope(scope)}`;
  return undefined;
}

/** A `file:` URL that may not be read. */
export class FileUrlRefused extends Error {}

/**
 * Opens `file` for reading when `scope` allows it. What was opened is checked
 * to be what was judged, so a link swapped in between is refused as well.
 */
export function openWithinScope(file: string, scope: FileUrlScope): number {
  const refusal = fileUrlRefusal(file, scope);
  if (refusal !== undefined) throw new FileUrlRefused(refusal);
  const real = fs.realpathSync(path.resolve(file));
  // Non-blocking, or opening a named pipe would wait for a writer forever: the caller refuses anything but a file.
  const fd = fs.openSync(real, fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0) | (fs.constants.O_NONBLOCK ?? 0));
  try {
    const opened = fs.fstatSync(fd);
    const now = fs.statSync(real);
    if (fs.realpathSync(real) !== real || now.dev !== opened.dev || now.ino !== opened.ino) {
      throw new FileUrlRefused(`${file} changed while kaos was checking where it leads`);
    }
    return fd;
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
}

const CREDENTIAL_PARAM_NAMES = new Set([
  "auth",
  "sig",
  "expires",
  "policy",
  "key-pair-id",
  // Azure shared access signatures: expiry, start and the delegation key's fields.
  "se",
  "st",
  "skoid",
  "sktid",
  "skt",
  "ske",
  "sks",
  "skv",
]);
const CREDENTIAL_PARAM_PARTS = [
  "token",
  "signature",
  "secret",
  "password",
  "passwd",
  "credential",
  "apikey",
  "api_key",
  "api-key",
  "accesskey",
  "access_key",
  "accessid",
  "session",
];
const CREDENTIAL_PARAM_PREFIXES = ["x-amz-", "x-goog-"];

/**
 * Whether a query parameter carries a credential or signing data rather than
 * naming content (case-insensitive): names containing token, signature,
 * secret, password, passwd, credential, apikey, api_key, api-key, accesskey,
 * access_key, accessid or session; the names auth, sig, expires, policy and
 * key-pair-id; Azure SAS se, st, skoid, sktid, skt, ske, sks, skv; and every
 * X-Amz-* and X-Goog-* parameter (presigned S3 and GCS URLs).
 */
export function isCredentialParam(name: string): boolean {
  const lower = name.toLowerCase();
  return (
    CREDENTIAL_PARAM_NAMES.has(lower) ||
    CREDENTIAL_PARAM_PARTS.some((part) => lower.includes(part)) ||
    CREDENTIAL_PARAM_PREFIXES.some((prefix) => lower.startsWith(prefix))
  );
}

/** The decoded name of one `name=value` segment of a query string. */
export function queryParamName(segment: string): string {
  const raw = segment.split("=", 1)[0] ?? "";
  try {
    return decodeURIComponent(raw.replaceAll("+", " "));
  } catch {
    return raw;
  }
}

/**
 * A URL with its credentials, userinfo and credential query parameters,
 * masked as *** (`mask`) or left out (`drop`); the other parameters keep
 * their order and encoding. A URL with none, or text that is not a URL, is
 * returned unchanged, byte for byte.
 */
function rewriteCredentials(url: string, how: "mask" | "drop"): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return url;
  }
  let changed = false;
  if (parsed.username !== "" || parsed.password !== "") {
    parsed.username = how === "mask" ? "***" : "";
    parsed.password = "";
    changed = true;
  }
  if (parsed.search.length > 1) {
    const segments = parsed.search.slice(1).split("&");
    const rewritten = segments.flatMap((segment) => {
      if (!isCredentialParam(queryParamName(segment))) return [segment];
      return how === "mask" ? [`${segment.split("=", 1)[0] ?? ""}=***`] : [];
    });
    if (rewritten.length !== segments.length || rewritten.some((segment, index) => segment !== segments[index])) {
      parsed.search = rewritten.length === 0 ? "" : `?${rewritten.join("&")}`;
      changed = true;
    }
  }
  return changed ? parsed.toString() : url;
}

/** The URL as locks and data keys record it: its credentials left out. */
export function sourceIdentity(url: string): string {
  return rewriteCredentials(url, "drop");
}

/** The URL as messages show it: its credentials as ***, so they never reach a terminal or a log. */
export function redactUrl(url: string): string {
  return rewriteCredentials(url, "mask");
}

/** Whether two URLs name the same content, credentials aside. */
export function sameSource(a: string, b: string): boolean {
  return a === b || sourceIdentity(a) === sourceIdentity(b);
}
