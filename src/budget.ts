// The global budget of body bytes held across all calls (limits.globalHeldBytes): a call
// reserves before it asks Envoy for a whole body and releases when it has answered or ended.
export class MemoryBudget {
  private heldBytes = 0;

  constructor(private limitBytes: number) {}

  tryReserve(bytes: number): boolean {
    if (this.heldBytes + bytes > this.limitBytes) return false;
    this.heldBytes += bytes;
    return true;
  }

  release(bytes: number): void {
    this.heldBytes = Math.max(0, this.heldBytes - bytes);
  }

  /**
   * A new limit from a configuration reload. Reservations already made stay (their calls finish with
   * what they were promised); a smaller limit only refuses new reservations until enough is released.
   */
  resize(limitBytes: number): void {
    this.limitBytes = limitBytes;
  }

  get held(): number {
    return this.heldBytes;
  }

  get limit(): number {
    return this.limitBytes;
  }
}
