"""Teacher forcing through the input-feeding LSTM decoder with Luong attention, its backward
written by hand.

Input feeding makes the decoder a loop over target steps. Through autograd, every step's
backward also forms its own weight, key and memory gradients as small products and adds them up
one step at a time, and the graph of some thirty ops per step costs its own bookkeeping. Here the
forward saves what the backward needs, the backward loop keeps only the sequential part of each
step (two products and two matrix-vector products per layer and attention), and the gradients of
the LSTM weights, the attentional layer, the keys and the memory are one product each over all
steps. The maths is the written-out loop's (nmt.decoder, `_input_feeding_loop`, kept as the
reference; tests compare them); sums run in another order, so the last bits differ.

Per step t, layer l (gate order i, f, g, o as nn.LSTM's):
    gates = [x; h_l] [W_ih; W_hh]^T + b_ih + b_hh, where x is [emb(y_t); feed] on layer 0
    c_l = f * c_l + i * g;  h_l = o * tanh(c_l);  x = h_l (times a dropout mask between layers)
    p = softmax(h keys^T) over real source positions;  ctx = p memory
    a = tanh([ctx; h] W_combine^T);  feed = a * dropout mask
"""

from __future__ import annotations

from typing import Any

import torch


def _cell_backward(
    d_h: torch.Tensor,
    d_c: torch.Tensor | None,
    act: torch.Tensor,
    c_prev: torch.Tensor,
    tanh_c: torch.Tensor,
    d_gates: torch.Tensor,
) -> torch.Tensor:
    """One LSTM cell's backward: writes dL/dgates (B, 4H), before the activations, into d_gates;
    returns dL/dc_prev."""
    i, f, g, o = act.chunk(4, dim=1)
    d_c_new = d_h * o * (1 - tanh_c * tanh_c)
    if d_c is not None:
        d_c_new = d_c_new + d_c
    d_act = torch.cat([d_c_new * g, d_c_new * c_prev, d_c_new * i, d_h * tanh_c], dim=1)
    slope = act * (1 - act)  # sigmoid' for i, f, o
    hidden = g.size(1)
    slope[:, 2 * hidden : 3 * hidden] = 1 - g * g  # tanh' for g
    torch.mul(d_act, slope, out=d_gates)
    return d_c_new * f


class InputFeedingLSTM(torch.autograd.Function):
    """Attentional vectors (B, T, A) of teacher forcing; see the module docstring.

    Inputs: the compute dtype (the autocast dtype, or the parameters'); embedded (T, B, E) target
    embeddings; h0, c0 (L, B, H); feed0 (B, A); keys (B, S, H); memory (B, S, M); mask (B, S),
    True at real source tokens; w_combine (A, M + H); out_masks (T, B, A) and layer_masks
    (L - 1, T, B, H), dropout masks already scaled by 1 / (1 - p), or None; then nn.LSTM's
    weight_ih, weight_hh, bias_ih, bias_hh of each layer. Gradients come back in each input's
    dtype.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        dtype: torch.dtype,
        embedded: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        feed0: torch.Tensor,
        keys: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        w_combine: torch.Tensor,
        out_masks: torch.Tensor | None,
        layer_masks: torch.Tensor | None,
        *lstm: torch.Tensor,
    ) -> torch.Tensor:
        steps, batch, emb_size = embedded.shape
        num_layers, _, hidden = h0.shape
        # the inputs' own dtypes, for their gradients (keys and memory are cast below)
        ctx.dtypes = [x.dtype for x in (embedded, h0, c0, feed0, keys, memory, w_combine, *lstm)]
        # Per layer, [W_ih W_hh]^T (I + H, 4H) and b_ih + b_hh, in the compute dtype.
        weights = [torch.cat(lstm[k : k + 2], dim=1).t().to(dtype) for k in range(0, len(lstm), 4)]
        biases = [(lstm[k + 2] + lstm[k + 3]).to(dtype) for k in range(0, len(lstm), 4)]
        w_comb = w_combine.to(dtype)
        # Attention runs in fp32: its (B, 1, S) products are matrix-vector products, which took
        # half the time in fp32 that they took in bf16 here, and softmax keeps fp32's precision.
        attention_dtype = torch.promote_types(dtype, torch.float32)
        keys, memory = keys.to(attention_dtype), memory.to(attention_dtype)
        # Per layer, each step's [x; h_prev] (T, B, I + H): one product forms the weight
        # gradient over all steps. Layer 0's x starts with the embeddings, whose part of the
        # gates is one product for all steps.
        inputs = [embedded.new_empty(steps, batch, w.size(0), dtype=dtype) for w in weights]
        inputs[0][..., :emb_size] = embedded
        x_gates = torch.addmm(
            biases[0], inputs[0][..., :emb_size].flatten(0, 1), weights[0][:emb_size]
        )
        x_gates = x_gates.view(steps, batch, -1)
        acts: list[list[torch.Tensor]] = [[] for _ in weights]  # gate activations (B, 4H)
        cells = [[c.to(dtype)] for c in c0.unbind(0)]  # c from c0 on (B, H)
        tanh_cells: list[list[torch.Tensor]] = [[] for _ in weights]
        probs = keys.new_empty(batch, steps, keys.size(1))
        ctx_h = inputs[0].new_empty(steps, batch, w_comb.size(1))  # [ctx; h]: h, the top
        # layer's, is also the attention's query
        attentional = inputs[0].new_empty(steps, batch, w_comb.size(0))  # a before dropout
        outputs = inputs[0].new_empty(batch, steps, w_comb.size(0))
        keys_t = keys.transpose(1, 2)  # (B, H, S)
        padding = ~mask.unsqueeze(1)  # (B, 1, S)
        h = [x.to(dtype) for x in h0.unbind(0)]
        feed = feed0.to(dtype)
        for t in range(steps):
            x = feed
            for layer in range(num_layers):
                skip = emb_size if layer == 0 else 0
                xh = inputs[layer][t, :, skip:]  # (B, I + H): x, then h
                xh[:, : x.size(1)] = x
                xh[:, x.size(1) :] = h[layer]
                base = x_gates[t] if layer == 0 else biases[layer]
                act = torch.addmm(base, xh, weights[layer][skip:])  # (B, 4H)
                act[:, : 2 * hidden].sigmoid_()
                act[:, 2 * hidden : 3 * hidden].tanh_()
                act[:, 3 * hidden :].sigmoid_()
                i, f, g, o = act.chunk(4, dim=1)
                c = torch.addcmul(f * cells[layer][t], i, g)
                tanh_c = torch.tanh(c)
                h[layer] = o * tanh_c
                acts[layer].append(act)
                cells[layer].append(c)
                tanh_cells[layer].append(tanh_c)
                x = h[layer]
                if layer_masks is not None and layer < num_layers - 1:
                    x = x * layer_masks[layer, t]
            scores = torch.bmm(x.to(keys.dtype).unsqueeze(1), keys_t).masked_fill_(
                padding, -torch.inf
            )
            p = torch.softmax(scores, dim=-1)  # (B, 1, S)
            probs[:, t] = p.squeeze(1)
            context = torch.bmm(p, memory).squeeze(1)  # (B, M)
            ctx_h[t, :, : context.size(1)] = context
            ctx_h[t, :, context.size(1) :] = x
            a = torch.tanh(torch.mm(ctx_h[t], w_comb.t()), out=attentional[t])
            feed = a if out_masks is None else a * out_masks[t]
            outputs[:, t] = feed
        ctx.save_for_backward(
            keys, memory, w_comb, out_masks, layer_masks, probs, ctx_h, attentional,
        )  # fmt: skip
        ctx.per_layer = (weights, inputs, acts, cells, tanh_cells)
        ctx.emb_size = emb_size
        return outputs

    @staticmethod
    def backward(ctx: Any, d_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        keys, memory, w_comb, out_masks, layer_masks, probs, ctx_h, attentional = ctx.saved_tensors
        weights, inputs, acts, cells, tanh_cells = ctx.per_layer
        num_layers, emb_size = len(weights), ctx.emb_size
        steps, batch, _ = ctx_h.shape
        memory_size = memory.size(2)
        hidden = ctx_h.size(2) - memory_size
        queries = ctx_h[:, :, memory_size:].transpose(0, 1)  # (B, T, H), the top layer's h
        d_outputs = d_outputs.to(attentional.dtype)
        new = attentional.new_empty
        d_pre = new(attentional.shape)  # (T, B, A) before the attentional tanh
        d_context = memory.new_empty(batch, steps, memory_size)  # in the attention's dtype
        d_scores = memory.new_empty(batch, steps, keys.size(1))
        d_gates = [new(steps, batch, 4 * hidden) for _ in weights]
        memory_t = memory.transpose(1, 2)  # (B, M, S)
        d_h: list[torch.Tensor | None] = [None] * num_layers
        d_c: list[torch.Tensor | None] = [None] * num_layers
        d_feed: torch.Tensor | None = None
        for t in reversed(range(steps)):
            d_a = d_outputs[:, t] if d_feed is None else d_outputs[:, t] + d_feed
            if out_masks is not None:
                d_a = d_a * out_masks[t]
            a = attentional[t]
            torch.mul(d_a, 1 - a * a, out=d_pre[t])
            d_ctx_h = torch.mm(d_pre[t], w_comb)  # (B, M + H)
            d_ctx = d_ctx_h[:, :memory_size].to(memory.dtype)
            d_context[:, t] = d_ctx
            d_p = torch.bmm(d_ctx.unsqueeze(1), memory_t)  # (B, 1, S)
            p = probs[:, t].unsqueeze(1)
            d_s = p * (d_p - (d_p * p).sum(-1, keepdim=True))  # softmax backward; 0 at padding
            d_scores[:, t] = d_s.squeeze(1)
            d_query = torch.bmm(d_s, keys).squeeze(1)
            d_below = d_ctx_h[:, memory_size:] + d_query.to(d_ctx_h.dtype)  # (B, H)
            for layer in reversed(range(num_layers)):
                if layer < num_layers - 1 and layer_masks is not None:
                    d_below = d_below * layer_masks[layer, t]
                d_hl = d_h[layer]
                d_c[layer] = _cell_backward(
                    d_below if d_hl is None else d_below + d_hl,
                    d_c[layer],
                    acts[layer][t],
                    cells[layer][t],
                    tanh_cells[layer][t],
                    d_gates[layer][t],
                )
                skip = emb_size if layer == 0 else 0
                d_xh = torch.mm(d_gates[layer][t], weights[layer][skip:].t())  # (B, I + H)
                d_h[layer] = d_xh[:, -hidden:]
                d_below = d_xh[:, :-hidden]
            d_feed = d_below
        # The gradients that sum over steps: one product each.
        d_w_combine = torch.mm(d_pre.flatten(0, 1).t(), ctx_h.flatten(0, 1))  # (A, M + H)
        d_keys = torch.bmm(d_scores.transpose(1, 2), queries.to(keys.dtype))  # (B, S, H)
        d_memory = torch.bmm(probs.transpose(1, 2), d_context)  # (B, S, M)
        d_lstm: list[torch.Tensor] = []
        for layer in range(num_layers):
            flat = d_gates[layer].flatten(0, 1)  # (T * B, 4H)
            d_w = torch.mm(flat.t(), inputs[layer].flatten(0, 1))  # (4H, I + H) = [W_ih W_hh]
            d_bias = flat.sum(0)
            d_lstm += [d_w[:, :-hidden], d_w[:, -hidden:], d_bias, d_bias.clone()]
        d_embedded = torch.mm(d_gates[0].flatten(0, 1), weights[0][:emb_size].t())
        grads = [
            d_embedded.view(steps, batch, emb_size),
            torch.stack(d_h),  # type: ignore[arg-type]  (every layer ran at least one step)
            torch.stack(d_c),  # type: ignore[arg-type]
            d_feed,
            d_keys,
            d_memory,
            d_w_combine,
            *d_lstm,
        ]
        grads = [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]  # type: ignore[union-attr]
        return (None, *grads[:6], None, grads[6], None, None, *grads[7:])
