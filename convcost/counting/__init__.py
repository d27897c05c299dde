"""Stage 2, counting: per-layer params and MACs from the real modules (fvcore, with a
torch.utils.flop_counter fallback), module shapes, and the closed-form formulas that cross-check them."""
