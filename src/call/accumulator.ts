// Bytes kept across messages, stored so that they cost what is counted: one buffer that grows by
// doubling, not one Buffer object per chunk. A body sent in 1-byte chunks would otherwise cost a Buffer
// (and the decoded gRPC message behind it) per byte, hundreds of times what the budget sees.
const INITIAL_CAPACITY = 16 * 1024;

export class Accumulator {
  private store: Buffer | undefined;
  private used = 0;

  /** Bytes stored. */
  get length(): number {
    return this.used;
  }

  /** Bytes of memory this holds: what a budget must count. */
  get capacity(): number {
    return this.store?.length ?? 0;
  }

  /** The capacity after appending `bytes` more, without appending. */
  capacityFor(bytes: number): number {
    const needed = this.used + bytes;
    let capacity = Math.max(this.capacity, bytes > 0 ? INITIAL_CAPACITY : 0);
    while (capacity < needed) capacity *= 2;
    return capacity;
  }

  /** Copies `bytes` in. */
  append(bytes: Buffer): void {
    if (bytes.length === 0) return;
    const capacity = this.capacityFor(bytes.length);
    if (capacity !== this.capacity) {
      const grown = Buffer.allocUnsafe(capacity);
      if (this.store) this.store.copy(grown, 0, 0, this.used);
      this.store = grown;
    }
    bytes.copy(this.store!, this.used);
    this.used += bytes.length;
  }

  /** Everything stored, as a view (valid until the next append). */
  contents(): Buffer {
    return this.store ? this.store.subarray(0, this.used) : Buffer.alloc(0);
  }
}
