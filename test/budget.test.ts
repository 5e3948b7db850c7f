// The global memory budget resized by a configuration reload (limits.globalHeldBytes).
import { describe, expect, it } from 'vitest';
import { MemoryBudget } from '../src/budget.js';

describe('MemoryBudget.resize', () => {
  it('applies a larger limit to new reservations', () => {
    const budget = new MemoryBudget(100);
    expect(budget.tryReserve(100)).toBe(true);
    expect(budget.tryReserve(1)).toBe(false);
    budget.resize(150);
    expect(budget.limit).toBe(150);
    expect(budget.tryReserve(50)).toBe(true);
    expect(budget.held).toBe(150);
  });

  it('keeps reservations made before a smaller limit, and refuses new ones until they are released', () => {
    const budget = new MemoryBudget(100);
    expect(budget.tryReserve(80)).toBe(true);
    budget.resize(50);
    expect(budget.held).toBe(80); // the running call keeps what it was promised
    expect(budget.tryReserve(1)).toBe(false);
    budget.release(80);
    expect(budget.tryReserve(50)).toBe(true);
    expect(budget.tryReserve(1)).toBe(false);
  });
});
