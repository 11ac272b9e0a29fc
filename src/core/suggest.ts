/**
 * "Did you mean": the name a misspelt one was likely meant to be. Loaded only
 * when a name was not found, so its edit distance costs nothing otherwise.
 */
import { closest, distance } from "fastest-levenshtein";

/** The candidate `word` was likely meant to be: the same but for case, or a few edits away (about one in three letters). */
export function similarName(word: string, candidates: readonly string[]): string | undefined {
  if (candidates.length === 0) return undefined;
  const sameCase = candidates.find((candidate) => candidate.toLowerCase() === word.toLowerCase());
  if (sameCase !== undefined) return sameCase;
  const best = closest(word, [...candidates]);
  return distance(word, best) <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}
