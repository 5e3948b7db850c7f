// The global budget of body bytes held across all calls (issue 4, STYLE lesson 6): a call reserves
// before it asks Envoy for a whole body and releases when it has answered or ended.
export class MemoryBudget {
  private heldBytes = 0;

  constructor(private readonly limitBytes: number) {}

  tryReserve(bytes: number): boolean {
    if (this.heldBytes + bytes > this.limitBytes) return false;
    this.heldBytes += bytes;
    return true;
  }

  release(bytes: number): void {
    this.heldBytes = Math.max(0, this.heldBytes - bytes);
  }

  get held(): number {
    return this.heldBytes;
  }
}
