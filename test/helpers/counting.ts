/**
 * `value` with every read of its fields counted through `onRead`: a measure of
 * the work code does with it that needs no clock.
 */
export function readsCounted<T extends object>(value: T, onRead: () => void): T {
  return new Proxy(value, {
    get(target, key, receiver) {
      onRead();
      return Reflect.get(target, key, receiver) as unknown;
    },
  });
}
