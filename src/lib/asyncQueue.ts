/**
 * A bounded single-consumer queue that is also an async iterable: producers push,
 * one consumer drains. Overflow ends the queue with an error rather than growing
 * without limit (a slow consumer must resynchronise, not exhaust memory).
 */
export class AsyncQueue<T> {
  private readonly items: T[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;
  private failure: unknown;

  constructor(private readonly limit: number) {}

  push(item: T): boolean {
    if (this.closed) return false;
    if (this.items.length >= this.limit) {
      this.fail(new Error(`queue overflow: more than ${this.limit} items pending`));
      return false;
    }
    this.items.push(item);
    this.wake();
    return true;
  }

  close(): void {
    this.closed = true;
    this.wake();
  }

  fail(error: unknown): void {
    if (this.closed) return;
    this.failure = error;
    this.closed = true;
    this.wake();
  }

  get size(): number {
    return this.items.length;
  }

  async *drain(): AsyncGenerator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.closed) {
        if (this.failure !== undefined) throw this.failure;
        return;
      }
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }
}
