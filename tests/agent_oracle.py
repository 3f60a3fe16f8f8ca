"""An independent float64 NumPy computation of one FiDec / DeFlow / FQL update, written from SPEC.

It shares no code with the torch agents: plain loops over heads, states and samples, the Fisher
metric as an explicit d x d matrix per state. Parameters come in as dicts of NumPy arrays.

Stop-gradients are modelled with two parameter sets: ``live`` (what the gradient flows through)
and ``frozen`` (every quantity SPEC computes without gradient: Euler rollouts, Fisher scores,
critic targets, the actor's Q critic, alpha in the distillation term, D in alpha's loss, the Q
normaliser). With live == frozen the result is the loss; its derivative in ``live`` is the
gradient the torch agent must produce.
"""

from __future__ import annotations

import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def mlp(layers, x, norms=None):
    """layers: [(W [out, in], b [out])...]; GELU (+LayerNorm) after every hidden layer."""
    for i, (W, b) in enumerate(layers):
        x = x @ W.T + b
        if i < len(layers) - 1:
            x = gelu_tanh(x)
            if norms is not None:
                x = layer_norm(x, *norms[i])
    return x


def critic(heads, s, a):
    """heads: list over H of (layers [(W [in, out], b [out])...], norms [(scale, bias)...] or None) -> [H, N]."""
    x0 = np.concatenate([s, a], -1)
    out = []
    for layers, norms in heads:
        x = x0
        for i, (W, b) in enumerate(layers):
            x = x @ W + b
            if i < len(layers) - 1:
                x = gelu_tanh(x)
                if norms is not None:
                    x = layer_norm(x, *norms[i])
        out.append(x[:, 0])
    return np.stack(out)


def velocity(P, s, x, t):
    t = np.broadcast_to(np.asarray(t, dtype=np.float64).reshape(-1, 1), (x.shape[0], 1))
    return mlp(P["vf"], np.concatenate([s, x, t], -1))


def euler(P, s, z, steps):
    x = z.copy()
    for i in range(steps):
        x = x + velocity(P, s, x, np.full(x.shape[0], i / steps)) / steps
    return np.clip(x, -1.0, 1.0)


def state_action(layers, s, a):
    return mlp(layers, np.concatenate([s, a], -1))


def fisher_metric(P, s_b, z_b, e_b, t_b, cfg):
    """F (damped, symmetrised) and c for one state from its K samples (SPEC 4)."""
    K, d = z_b.shape
    F = np.zeros((d, d))
    for k in range(K):
        a_k = euler(P, s_b[None], z_b[k][None], cfg["flow_steps"])[0]
        x_k = (1 - t_b[k]) * e_b[k] + t_b[k] * a_k
        v_k = velocity(P, s_b[None], x_k[None], np.array([t_b[k]]))[0]
        if cfg["fisher_score"] == "velocity":
            g = v_k / max(1 - t_b[k], cfg["fisher_score_eps"])
        else:
            g = (t_b[k] * v_k - x_k) / max(1 - t_b[k], cfg["fisher_score_eps"])
        F += np.outer(g, g) / K
    F = 0.5 * (F + F.T) + cfg["fisher_damping"] * np.eye(d)
    c = max(np.trace(F) / d, cfg["fisher_trace_eps"])
    return F, c


def policy(agent, P, s, z, cfg):
    if agent == "fql":
        return np.clip(state_action(P["pol"], s, z), -1, 1)
    a_b = euler(P, s, z, cfg["flow_steps"])
    return np.clip(a_b + state_action(P["res"], s, a_b), -1, 1)


def losses(agent, live, frozen, cfg, batch, noise):
    """(total loss, metrics) of SPEC 1-8 (FQL: its actor loss) for one update."""
    s, a = batch["observations"], batch["actions"]
    B, d = a.shape
    m = {}
    # 1. critic
    a_next = np.clip(policy(agent, frozen, batch["next_observations"], noise["next_action"], cfg), -1, 1)
    next_qs = critic(frozen["target"], batch["next_observations"], a_next)
    next_q = next_qs.min(0) if cfg["q_agg"] == "min" else next_qs.mean(0)
    y = batch["rewards"] + cfg["discount"] * batch["masks"] * next_q
    q_data = critic(live["critic"], s, a)
    critic_loss = np.mean((q_data - y) ** 2)
    m.update({"critic/critic_loss": critic_loss, "critic/q_mean": q_data.mean()})
    m.update({"critic/q_max": q_data.max(), "critic/q_min": q_data.min()})
    # 2. flow matching
    t = noise["flow_t"]
    x_t = (1 - t) * noise["flow_x0"] + t * a
    bc = np.mean((velocity(live, s, x_t, t[:, 0]) - (a - noise["flow_x0"])) ** 2)
    m["actor/bc_flow_loss"] = bc

    def q_term(actions_live, actions_frozen):
        q = critic(frozen["critic"], s, actions_live).mean(0)
        q_fr = critic(frozen["critic"], s, actions_frozen).mean(0)
        loss = -q.mean()
        if cfg["normalize_q_loss"]:
            scale = np.abs(q_fr).mean()
            if agent == "fidec":
                scale = max(scale, 1e-6)
            loss = loss / scale
        return loss, q

    if agent == "fql":
        target = euler(frozen, s, noise["base"], cfg["flow_steps"])
        mu = state_action(live["pol"], s, noise["base"])
        mu_fr = state_action(frozen["pol"], s, noise["base"])
        distill = np.mean((mu - target) ** 2)
        q_loss, q = q_term(np.clip(mu, -1, 1), np.clip(mu_fr, -1, 1))
        actor = bc + cfg["alpha"] * distill + q_loss
        m.update({"actor/distill_loss": distill, "actor/q_loss": q_loss, "actor/q": q.mean()})
    else:
        # 3. residual on base actions
        a_b = euler(frozen, s, noise["base"], cfg["flow_steps"])
        r = state_action(live["res"], s, a_b)
        r_fr = state_action(frozen["res"], s, a_b)
        # 4-5. divergence
        if agent == "fidec":
            pens, pens_fr, quads, cs, diags = [], [], [], [], []
            for b in range(B):
                F, c = fisher_metric(
                    frozen, s[b], noise["fisher_noise"][b], noise["fisher_x0"][b], noise["fisher_t"][b], cfg
                )
                Fn = F / c
                pens.append(r[b] @ Fn @ r[b] / d)
                pens_fr.append(r_fr[b] @ Fn @ r_fr[b] / d)
                quads.append(r[b] @ Fn @ r[b])
                cs.append(c)
                diags.append(np.diag(Fn).mean())
            D, D_fr = np.mean(pens), np.mean(pens_fr)
            m.update(
                {"actor/fisher_quad_mean": np.mean(quads), "actor/fisher_trace_per_dim_mean": np.mean(cs)}
            )
            m["actor/fisher_diag_mean"] = np.mean(diags)
        else:
            D, D_fr = np.mean(r**2), np.mean(r_fr**2)
        # 6. Lagrange
        if cfg["use_lagrange"]:
            alpha = math.exp(frozen["log_alpha"])
            alpha_loss = -live["log_alpha"] * (D_fr - cfg["target_divergence"])
        else:
            alpha, alpha_loss = cfg["alpha"], 0.0
        distill = alpha * D
        # 7. value
        q_loss, q = q_term(np.clip(a_b + r, -1, 1), np.clip(a_b + r_fr, -1, 1))
        actor = bc + distill + q_loss + alpha_loss
        m.update({"actor/distill_loss": D, "actor/q_loss": q_loss, "actor/q": q.mean()})
        m.update(
            {
                "actor/alpha_loss": alpha_loss,
                "actor/alpha_value": alpha,
                "actor/refinement_mse": np.mean(r**2),
            }
        )
    m["actor/actor_loss"] = actor
    m["actor/mse"] = np.mean((policy(agent, frozen, s, noise["metric"], cfg) - a) ** 2)
    return critic_loss + actor, m


def adam_clip_polyak(params, grads, target, cfg, *, lr, eps=1e-8, betas=(0.9, 0.999)):
    """First Adam step after the global-norm clip, and the Polyak target (SPEC "Losses") towards the
    critic of before the step, as the authors' ``target_update`` (it reads the pre-update ``self.network``)."""
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    scale = 1.0 if cfg["grad_clip"] is None else min(1.0, cfg["grad_clip"] / (norm + 1e-6))
    new = {}
    for k, p in params.items():
        g = grads[k] * scale
        m_hat = (1 - betas[0]) * g / (1 - betas[0])
        v_hat = (1 - betas[1]) * g**2 / (1 - betas[1])
        new[k] = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    new_target = {}
    for k, tp in target.items():
        new_target[k] = cfg["tau"] * params["critic." + k] + (1 - cfg["tau"]) * tp
    return new, new_target, norm, scale
