// A call's share of the global memory budget (limits.globalHeldBytes). Every byte a call keeps in memory
// beyond the message being answered (a whole body, bytes held for verification, what an editor holds
// back) is reserved here first; `close` gives everything back, whatever path ended the call.
import type { MemoryBudget } from '../budget.js';

export class BudgetLease {
  private reserved = 0;
  /** The part of `reserved` that follows a size that changes chunk by chunk (an editor's hold-back). */
  private tracked = 0;

  constructor(private readonly budget: MemoryBudget | undefined) {}

  /** Bytes this call has reserved. */
  get bytes(): number {
    return this.reserved;
  }

  /** Reserves `bytes` more; false (and nothing reserved) when the budget has no room. */
  reserve(bytes: number): boolean {
    if (bytes <= 0) return true;
    if (this.budget && !this.budget.tryReserve(bytes)) return false;
    this.reserved += bytes;
    return true;
  }

  /** Gives back up to `bytes` of what was reserved with `reserve`. */
  release(bytes: number): void {
    const released = Math.min(bytes, this.reserved - this.tracked);
    if (released <= 0) return;
    this.budget?.release(released);
    this.reserved -= released;
  }

  /** Keeps the tracked reservation at `bytes`; false when growing it finds no room (the old size stays). */
  track(bytes: number): boolean {
    if (bytes > this.tracked) {
      if (!this.reserve(bytes - this.tracked)) return false;
    } else if (bytes < this.tracked) {
      this.budget?.release(this.tracked - bytes);
      this.reserved -= this.tracked - bytes;
    }
    this.tracked = bytes;
    return true;
  }

  /** Gives everything back. Idempotent. */
  close(): void {
    this.budget?.release(this.reserved);
    this.reserved = 0;
    this.tracked = 0;
  }
}
