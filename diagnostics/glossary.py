"""What each column of the diagnostics' tables means, in one line with its unit: the one source for the
dashboard's column help (ui/tables.py) and the legends of report.html.

A column is looked up from the most specific scope to the least: the table of a diagnostic
(``"steering.steered"``, table names as in ``Result.tables()``), then the diagnostic (``"steering"``),
then the columns of stored tensors that several diagnostics share. A column with a suffix such as
``_lo`` that has no entry of its own is described from its base column with the scope's ``*_lo`` entry.
"""

from __future__ import annotations

from typing import Iterable

_SUFFIXES = ("_lo", "_hi", "_sd", "_min", "_max")
# The built-in benchmarks' losses are cross-entropies; a loaded trace's loss is whatever its loop logged.
_NATS = "nats on the built-in benchmarks"

# Columns that describe a stored tensor wherever they appear.
_TENSOR = {
    "name": "the tensor's name as stored in the checkpoint",
    "shape": "the tensor's dimensions as stored",
    "kind": "what the tensor is for in the network (attention-q, mlp-up, embedding, ...), from its name; a fused "
            "q/k/v weight reads attention-q+attention-k+attention-v",
    "block": "the network block it belongs to: embeddings, a block number, head or other",
    "layer_type": "linear, conv1d or conv2d: how the matrix is read (a convolution's kernel positions are pooled)",
}

GLOSSARY: dict[str, dict[str, str]] = {
    "overview": {
        "dtype": "element type as stored (float32, bfloat16, int64, ...)",
        "numel": "number of elements (count)",
        "frobenius_norm": "Frobenius norm sqrt(sum of squared elements), in float64, in weight units; empty for "
                          "integer tensors",
        "status": "finite; not finite (a NaN or infinity among the elements); all zero; or not floating point",
        "analysed": "whether the spectral diagnostics analyse this tensor as a weight matrix",
        "reason": "why a tensor is not analysed (1-D, not floating point, not finite, all zero, ...)",
    },
    "spectra": {
        "N": "rows of the matrix in its tall orientation (the larger side)",
        "M": "columns of the matrix in its tall orientation (the smaller side): the number of eigenvalues per slice",
        "Q": "aspect ratio N / M (>= 1)",
        "rf": "receptive field: kernel positions of a convolution, whose slices are pooled; 1 for a linear layer",
        "num_evals": "eigenvalues in the ESD, M x rf (count)",
        "lambda_max": "largest eigenvalue of W^T W, the squared spectral norm (squared weight units); "
                      "WeightWatcher's spectral_norm",
        "log_spectral_norm": "log10 lambda_max",
        "frobenius_norm_sq": "squared Frobenius norm ||W||_F^2, the sum of the eigenvalues (squared weight units)",
        "log_norm": "log10 of the squared Frobenius norm (frobenius_norm_sq)",
        "stable_rank": "frobenius_norm_sq / lambda_max: how many directions carry the matrix's energy (<= M)",
        "entropy": "spectral entropy of the normalised eigenvalues divided by log(rank): 1 when all are equal",
        "matrix_rank": "singular values above s_max x N x eps (numpy's rule), summed over a convolution's slices",
        "rank_loss": "M - matrix_rank: directions the matrix collapses (count, summed over slices)",
        "weak_rank_loss": "eigenvalues below 1e-6 (count)",
        "alpha": "power-law exponent of the ESD tail, Clauset's maximum-likelihood fit at the xmin of smallest D",
        "xmin": "smallest eigenvalue of the fitted tail (squared weight units)",
        "xmax": "largest eigenvalue of the fitted tail (squared weight units)",
        "D": "Kolmogorov-Smirnov distance between the tail and the fitted power law (0 to 1; small: a close fit)",
        "sigma": "standard error of alpha, (alpha - 1) / sqrt(num_pl_spikes)",
        "num_pl_spikes": "eigenvalues >= xmin: the size of the fitted tail (count)",
        "alpha_weighted": "alpha x log10 lambda_max (WeightWatcher's layer quality metric)",
        "log_alpha_norm": "log10 of sum lambda^alpha, the Schatten alpha-norm",
        "warning": "over-trained (alpha < 2) or under-trained (alpha > 6), HTSR's reading; empty between",
        "pl_method": "how xmin was chosen: clauset, or small-n (min D) / small-n (J) below 20 eigenvalues",
        "phase": "random-like, bulk+spikes, heavy-tailed or very-heavy-tailed (Martin & Mahoney 2021), from the MP "
                 "bulk fit and where the fitted tail lies; too-small for skipped layers with too few eigenvalues",
        "pl_trust": "whether the power law is believed: a heavy-tailed phase, >= 8 tail eigenvalues, alpha <= 6 and, "
                    "with goodness of fit, p >= 0.1",
        "pl_verdict": "why the power law is or is not trusted",
        "mp_sigma": "element scale of the Marchenko-Pastur law fitted to the bulk (weight units)",
        "mp_edge": "MP bulk edge plus 4 Tracy-Widom scales: the largest eigenvalue noise reaches (squared weight "
                   "units)",
        "num_above_mp_edge": "eigenvalues past mp_edge (count)",
        "mp_bulk_ks": "KS distance between the eigenvalues up to mp_edge and the fitted MP law (small: an MP bulk)",
        "tail_past_mp_edge": "share of the fitted tail past mp_edge; below 0.5 the power law is mostly fitted to bulk",
        "lr_lognormal_R": "normalised log-likelihood ratio, power law against lognormal on the tail (> 0 favours "
                          "the power law)",
        "lr_lognormal_p": "p-value of lr_lognormal_R (small: its sign is significant)",
        "lr_exponential_R": "normalised log-likelihood ratio, power law against exponential on the tail (> 0 "
                            "favours the power law)",
        "lr_exponential_p": "p-value of lr_exponential_R (small: its sign is significant)",
        "lr_truncated_power_law_R": "normalised log-likelihood ratio, power law against truncated power law (nested; "
                                    "> 0 favours the power law)",
        "lr_truncated_power_law_p": "p-value of lr_truncated_power_law_R (nested test)",
        "alpha_ci_low": "lower end of the alpha interval (alpha_ci_method says how it was computed)",
        "alpha_ci_high": "upper end of the alpha interval",
        "alpha_ci_method": "asymptotic: alpha +- z (alpha - 1) / sqrt(n_tail) with xmin fixed; bootstrap: resampled, "
                           "xmin re-chosen in every resample",
        "pl_pvalue": "Clauset-Shalizi-Newman bootstrap p-value of the power law; below 0.1 it is ruled out",
        "eig_method": "how the eigenvalues were computed: gram (float64 Gram matrix), svd, or svd-fallback "
                      "(near-singular)",
        "sigma_mp": "WeightWatcher's Marchenko-Pastur fit: element scale on the mean-1 scale (dimensionless)",
        "bulk_min": "lower edge of WeightWatcher's MP bulk (squared weight units)",
        "bulk_max": "upper edge of WeightWatcher's MP bulk (squared weight units)",
        "num_spikes": "eigenvalues past WeightWatcher's bulk edge plus a Tracy-Widom margin (count)",
        "mp_softrank": "bulk_max / lambda_max (0 to 1; small: the largest eigenvalue stands far above the bulk)",
        "rand_lambda_max": "largest eigenvalue of the matrix with its elements shuffled (squared weight units)",
        "rand_distance": "Jensen-Shannon distance between the sorted eigenvalue vectors of W and of W shuffled, each "
                         "read as a probability vector (WeightWatcher's convention)",
        "ww_softrank": "rand_lambda_max / lambda_max (< 1: structure the shuffle destroys)",
        "rand_num_spikes": "num_spikes of the shuffled matrix (count)",
        "detX_num": "SETOL: eigenvalues in the tail whose product of mean-1 rescaled eigenvalues first drops below 1 "
                    "(count)",
        "detX_val": "SETOL: the smallest eigenvalue of that tail, on the original scale (squared weight units)",
        "ERG_gap": "detX_num - num_pl_spikes: SETOL's ERG tail against the power-law tail (count; 0: they agree)",
        "num_fingers": "largest eigenvalues clipped off as fingers before the refit (fix_fingers, count)",
        "raw_alpha": "alpha before the fingers were clipped",
        "conv_fft_n": "input size of the exact convolution operator spectrum (pixels per side, circular padding)",
        "conv_sv_max": "largest singular value of the convolution operator: its operator norm (weight units)",
        "conv_sv_min": "smallest singular value of the convolution operator (weight units)",
        "conv_orth_max_dev": "max |s - 1| over the operator's singular values (0 for an orthogonal convolution)",
        "conv_orth_rms_dev": "sqrt(mean (s - 1)^2) over the operator's singular values (0 for an orthogonal "
                             "convolution)",
        "conv_fft_note": "why the operator spectrum was not computed",
    },
    "spectra.skipped": {
        "reason": "why the tensor was not analysed",
        "phase": "too-small when it has fewer eigenvalues than min_evals; empty otherwise",
    },
    "alignment": {
        "split": "which held-out items: unseen classes (whole classes held out), seen classes (a share of every "
                 "class) or random rows (no labels); for budget curves all/seen/unseen classes",
        "map": "the map from A's space to B's (procrustes, lstsq, ridge, relaxed, penalised, ...); none: identity",
        "weight": "the map's penalty weight (ridge alpha, relaxed gamma, penalised weight); empty otherwise",
        "n_anchors": "paired items the map was fitted on (count)",
        "seed": "random seed of the split and the anchor draw",
        "draw": "which anchor draw (each redraws the split)",
        "draws": "anchor draws averaged (count)",
        "top1_ab": "share of held-out queries whose nearest B item after the map is their own pair (A's item mapped, "
                   "B's searched)",
        "top1_ba": "share of held-out queries whose nearest A item is their own pair (B's item, A's mapped items "
                   "searched)",
        "cos": "mean cosine between matched held-out pairs after the map",
        "cos_centred": "mean cosine of matched pairs with each side's held-out mean removed first",
        "orth_error": "||W^T W - I||_F: how far the map is from orthogonal (0: orthogonal)",
        "interval": "how the _lo / _hi columns were made: t-interval over draws, or Wilson / normal over one draw's "
                    "queries",
        "*_lo": "lower end of the 95% interval of {base}",
        "*_hi": "upper end of the 95% interval of {base}",
        "*_sd": "standard deviation of {base} over single draws",
        "recall5_ab": "share of queries (A mapped, B searched) whose pair is among the 5 nearest",
        "recall5_ba": "share of queries (B, A mapped searched) whose pair is among the 5 nearest",
        "recall10_ab": "share of queries (A mapped, B searched) whose pair is among the 10 nearest",
        "recall10_ba": "share of queries (B, A mapped searched) whose pair is among the 10 nearest",
        "mean_rank_ab": "mean rank of the pair among B's items for A's mapped query (1 is best; ties count against)",
        "mean_rank_ba": "mean rank of the pair among A's mapped items for B's query (1 is best; ties count against)",
        "class_top1_ab": "share of queries whose nearest B item has the query's label (empty without labels)",
        "class_top1_ba": "share of queries whose nearest mapped A item has the query's label (empty without labels)",
        "reflection": "the best orthogonal map had determinant -1 (a reflection) in some draw",
        "strategy": "how anchors were chosen: random, kcenter (cover the space) or volume (span it)",
        "n_test": "held-out items: queries and candidates (count)",
        "n_test_classes": "classes among the held-out items (count)",
        "det": "determinant of the map (empty if it overflows)",
        "det_sign": "sign of the determinant: -1 for a map that reflects",
        "log_abs_det": "log |det W|: the map's volume change (0: keeps volume)",
        "condition": "s_max / s_min of the map (1: orthogonal up to scale)",
        "sv_max": "largest singular value of the map",
        "sv_min": "smallest singular value of the map",
        "scale": "Procrustes' isotropic scale (1 when scaling is off)",
        "anchor_rank": "rank of the centred anchors in A's space (count)",
        "anchor_effective_rank": "effective rank of the centred anchors (Roy & Vetterli: exp of the entropy of the "
                                 "normalised singular values)",
        "measure": "map-free similarity: linear CKA, debiased CKA, mutual k-NN or SVCCA",
        "value": "the similarity on the held-out rows (1: the same geometry)",
        "null_mean": "mean of the similarity over shuffles of B's rows (the null)",
        "null_sd": "standard deviation of the similarity over the shuffles",
        "z": "(value - null_mean) / null_sd: distance from the null in null sds",
        "p_value": "(1 + shuffles at or above value) / (1 + shuffles)",
        "p_floor": "1 / (1 + shuffles): the smallest p-value the shuffles can give",
        "n_permutations": "shuffles of B's rows in the null (count)",
        "n_rows": "held-out rows the similarity is measured on (count)",
        "n_queries": "queries scored (count)",
        "family": "relaxed or penalised map family, or one of its ends: lstsq, procrustes",
        "dist_to_procrustes": "||W - R||_F, the map's distance from the orthogonal Procrustes map R",
        "fitted_on": "the modality the maps were fitted on",
        "tested_on": "the modality the maps were scored on",
        "setting": "whose queries are labelled against whose class prompts",
        "accuracy": "share of queries given their own class",
        "n_classes": "classes to choose from (count)",
        "chance": "1 / n_classes: the accuracy of guessing",
    },
    "directions": {
        "index": "direction number, from 1 (largest eigenvalue first)",
        "eig_AtA_raw": "eigenvalue i of A^T A (raw A: the paper's closed form; squared weight units)",
        "sv_raw": "singular value i of A (raw; weight units); its square is eig_AtA_raw",
        "explained_raw": "eig_AtA_raw / trace(A^T A): share of A's energy along direction i",
        "eigengap_raw": "relative gap to the next eigenvalue of A^T A, (l_i - l_(i+1)) / l_i",
        "resolved_raw": "both gaps of this eigenvalue of A^T A exceed sqrt(2/n) (North et al. 1982): the direction is "
                        "determined",
        "eig_AtA_rownorm": "eigenvalue i of R^T R, R = diag(1/||a_r||) A (rows of A scaled to unit length: genforce)",
        "explained_rownorm": "eig_AtA_rownorm / trace(R^T R)",
        "eigengap_rownorm": "relative gap to the next eigenvalue of R^T R",
        "resolved_rownorm": "both gaps of this eigenvalue of R^T R exceed sqrt(2/n)",
        "cos_rownorm_raw": "|cos| between direction i of R^T R and direction i of A^T A",
        "best_raw_match": "the eigenvector of A^T A closest to direction i of R^T R",
        "best_raw_match_cos": "its |cos|",
        "readout_of": "whose directions the readout columns describe: raw (A^T A) or rownorm (R^T R)",
        "top_tokens": "tokens the logit lens of +v promotes most (language models)",
        "bottom_tokens": "tokens the logit lens of -v promotes most (language models)",
        "top_sentences": "built-in sentences whose embedding moves most along the direction, with the shift (encoders)",
        "singular_value": "singular value of A (weight units)",
        "k": "rank of the projector",
        "equal_sv_error": "closed-form min over c and rank-k partial isometries P of ||A - c P||_F (weight units)",
        "equal_sv_relative": "equal_sv_error / ||A||_F",
        "eckart_young_error": "distance to the best rank-k approximation (Eckart-Young; weight units)",
        "eckart_young_relative": "eckart_young_error / ||A||_F",
        "direction": "the direction traversed (its index)",
        "alpha": "traversal step, in units of the mean norm of what flows into the layer on the prompts",
        "alpha_abs": "the same step in hidden-state units",
        "kl": "KL(p_0 || p_alpha) of the next token, mean over prompts (nats)",
        "kl_per_alpha2": "kl / alpha^2: the KL's curvature along the direction (nats)",
        "promoted": "tokens whose log-probability rises most",
        "generation": "greedy continuation of the first prompt with the direction added",
        "shift": "mean ||e_alpha - e_0|| of the probe sentences' embeddings (embedding units)",
        "nearest": "built-in sentence nearest to the first probe's moved embedding",
        "nearest_cos": "cosine of that nearest sentence",
    },
    "optimizer_traces": {
        "name": "the optimizer and its scope as the charts name them",
        "optimizer": "the optimizer (as run)",
        "label": "the optimizer's display name",
        "scope": "which parameters the matrix optimizer takes: hidden_only (the rest stay on AdamW) or all_but_head",
        "lr": "learning rate",
        "lr_scale": "the rate as a multiple of the optimizer's default rate",
        "lr_grid": "the learning rates swept for this optimizer and scope",
        "lr_at_grid_edge": "the chosen rate is the lowest or highest swept: the best may lie beyond the grid",
        "seed": "random seed of the run (initial weights and batches)",
        "seeds": "seeds averaged (count)",
        "diverged": "the loss became NaN or infinite (for a mean: in some seed)",
        "chosen": "the rate of lowest mean best_val_loss over seeds: the one reported",
        "best_val_loss": f"lowest validation loss over the run's evaluations: its checkpoint ({_NATS})",
        "best_val_step": "step of that checkpoint",
        "test_loss_at_best_val": f"test loss at the best-validation checkpoint ({_NATS})",
        "test_acc_at_best_val": "test accuracy at the best-validation checkpoint (share correct)",
        "final_val_loss": f"validation loss at the last step ({_NATS})",
        "final_val_accuracy": "validation accuracy at the last step (share correct)",
        "final_test_loss": f"test loss at the last step ({_NATS}; empty for a diverged run)",
        "final_test_accuracy": "test accuracy at the last step (share correct; empty for a diverged run)",
        "final_train_loss": f"training loss of the last record ({_NATS})",
        "test_loss_ratio_to_adamw": "test_loss_at_best_val over AdamW's (< 1: better than AdamW)",
        "*_lo": "lower end of the 95% Student-t interval over seeds of {base}",
        "*_hi": "upper end of the 95% Student-t interval over seeds of {base}",
        "*_min": "lowest {base} over seeds",
        "*_max": "highest {base} over seeds",
        "steps_done": "optimizer steps taken (fewer than asked when the run diverged)",
        "ms_per_step": "forward + backward + optimizer time per step (ms)",
        "ms_forward": "forward pass time per step (ms)",
        "ms_backward": "backward pass time per step (ms)",
        "ms_optimizer": "optimizer step time per step (ms)",
        "ms_recorder": "the trace recorder's own time per step (ms)",
        "run_id": "the run's identifier in the trace",
        "step": "optimizer step of the record",
        "loss": f"mean training loss since the last record ({_NATS})",
        "train_s": "training wall time so far, without the recorder's (s)",
        "matrix": "the tracked weight matrix",
        "rms": "||dW||_F / sqrt(size): RMS of the applied update dW (weight units)",
        "rel_update": "||dW||_F / ||W||_F: the update's size relative to the weights",
        "spectral_norm": "largest singular value of dW (weight units)",
        "sv_cv": "std / mean of dW's singular values above 1e-3 s_max (0: a semi-orthogonal update)",
        "effective_rank": "exp of the entropy of dW's normalised singular values (dimensions)",
        "stable_rank": "sum s^2 / s_max^2 of dW (dimensions)",
        "condition": "s_max / s_min of dW over its numerical rank",
        "numerical_rank": "singular values of dW above 1e-3 s_max (count)",
        "neuron_cv": "std / mean of dW's row norms (0: every neuron moves as much)",
        "momentum_norm": "Frobenius norm of the optimizer's momentum in its own convention (empty when it keeps none)",
        "momentum_warning": "momentum norm below 100 x the Newton-Schulz epsilon: the orthogonalised direction is "
                            "mostly rounding",
        "alpha": "power-law alpha of the weight matrix's ESD, fitted as the spectra diagnostic does",
        "n_evals": "eigenvalues of the weight matrix (count)",
        "n_tail": "eigenvalues in the fitted tail (count)",
        "status": "whether the alpha fit succeeded, and why not",
        "val_loss": f"validation loss ({_NATS}); chooses checkpoints and rates",
        "val_accuracy": "validation accuracy (share correct)",
        "test_loss": f"test loss ({_NATS}); chooses nothing",
        "test_accuracy": "test accuracy (share correct); chooses nothing",
    },
    "optimizer_traces.routes": {
        "run_optimizer": "the run's optimizer",
        "name": "the parameter's name",
        "shape": "the parameter's dimensions",
        "optimizer": "the optimizer that updates this parameter",
        "reason": "why it is routed there",
    },
    "steering": {
        "s": "strength: the steered vector's norm in units of the run's unit (|a| or the mean |d|)",
        "p": "self-steering penalty: 0 keeps the sample's own direction, 1 only its axis part",
        "n": "held-out prompts scored (count)",
        "direction": "the steered direction: axis, pc1 (first PC, centred), probe, control (an unrelated concept's "
                     "axis) or random (the null)",
        "concept_gain": "mean change of the log expected number of concept words in a teacher-forced window of the "
                        "response (nats)",
        "concept_gain_lo": "lower end of the 95% bootstrap interval of concept_gain over prompts (nats)",
        "concept_gain_hi": "upper end of the 95% bootstrap interval of concept_gain over prompts (nats)",
        "null_gain": "mean gain of random directions of the same norm (nats)",
        "null_gain_sd": "standard deviation of the random directions' gains (nats)",
        "null_q95": "95th percentile of the random directions' gains (nats): reaching means above it",
        "concept_rate": "share of continuations that name a concept word (word-boundary match)",
        "concept_rate_lo": "lower end of the 95% Wilson interval of concept_rate",
        "concept_rate_hi": "upper end of the 95% Wilson interval of concept_rate",
        "null_rate": "share of the random directions' continuations that name a concept word",
        "ppl_ratio": "perplexity of neutral text with the vector added, over the unsteered model's (geometric mean; "
                     "1: unharmed)",
        "null_ppl_ratio": "the same for the random directions",
        "repetition": "share of the continuations' word 3-grams that repeat an earlier one",
        "null_repetition": "the same for the random directions",
        "fraction_reaching": "share of prompts whose gain is above null_q95",
        "reaching": "the mean gain is above null_q95",
        "text_pvalue": "one-sided Fisher exact test: more mentions than the random directions and the unsteered "
                       "model pooled",
        "index": "the triple's number in the triple file",
        "split": "fit (the axis and plane are fitted on it) or held-out",
        "prompt": "the triple's prompt",
        "cos_theta": "cos(theta_i): alignment of the difference vector d_i with the axis",
        "norm": "|d_i|: length of the difference vector (hidden-state units)",
        "normal_norm": "|o_i|: length of d_i's part orthogonal to the axis (hidden-state units)",
        "x": "normal part's coordinate along the fit plane's first basis vector (hidden-state units)",
        "y": "normal part's coordinate along the fit plane's second basis vector (hidden-state units)",
        "phi_deg": "angle in the fit plane (degrees, 0 to 360)",
        "sector": "sector of the fit plane the sample falls in (0 to K - 1)",
        "min_strength": "smallest strength whose gain is above its cell's null_q95 (empty if none)",
        "steerability": "1 / min_strength (0 if no strength reaches)",
        "gain_at_max": "the sample's gain at the largest strength (nats)",
        "null_gain_at_max": "mean gain of its random directions at the largest strength (nats)",
        "null_q95_at_max": "the cell's null 95th percentile at the largest strength (nats)",
        "rate": "share of the strengths whose continuation names the concept",
        "mentions_at_max": "the continuation at the largest strength names the concept",
        "ppl_ratio_at_max": "ppl_ratio at the largest strength",
        "phi_from_deg": "the sector's first angle (degrees)",
        "phi_to_deg": "the sector's last angle (degrees)",
        "count": "held-out samples in the sector (count)",
        "mean_steerability": "mean steerability of the sector's samples",
        "mean_gain": "mean gain at the largest strength (nats)",
        "mean_cos_theta": "mean cos(theta) of the difference vectors with the axis",
        "layer": "block L whose hidden state is read",
        "axis_norm": "|a|: length of the mean difference vector (hidden-state units)",
        "mean_norm": "mean |d_i| (hidden-state units)",
        "normal_spread": "RMS of |o_i| (hidden-state units)",
        "spread_ratio": "normal_spread / axis_norm",
        "plane_explained": "share of the normal parts' sum of squares in the top-2 plane",
        "unsteered": "continuation without steering",
        "steered": "continuation with the vector added",
        "random": "continuation along a random direction of the same norm",
    },
    "steering.steered": {
        "sample": "the triple's number",
        "kind": "unsteered, self (self-steering), random (the null: a random direction of the same norm) or direction",
        "direction": "none, own, random, or the steered direction's name",
        "draw": "the null's draw (-1 otherwise)",
        "norm": "norm of the added vector (hidden-state units)",
        "concept_score": "log expected number of concept words in the teacher-forced window",
        "gain": "concept_score minus the same prompt's unsteered score (nats)",
        "mentions": "the continuation names a concept word",
        "text": "the continuation",
    },
    "steering.examples": {
        "sample": "the triple's number",
    },
    "compare": {
        "checkpoint": "the checkpoint's name: its folder or file name in a series, the model spec in a list",
        "step": "training step read from the checkpoint's name; empty for a list of models",
        "fingerprint": "sha256 of the checkpoint's weight files: the key its results are stored under",
        "reason": "why the row has no numbers (empty when it has them)",
    },
    "compare.checkpoints": {
        "status": "ok, or failed when the checkpoint could not be loaded or analysed",
        "layers": "weight matrices the spectra diagnostic analysed (count)",
        "trusted_layers": "layers whose power law is trusted (pl_trust, count)",
        "mean_trusted_alpha": "mean alpha over the trusted layers; empty when none is trusted",
        "mean_alpha": "mean alpha over every fitted layer, trusted or not (for comparison)",
        "n_too-small": "layers with fewer eigenvalues than min_evals, not fitted (count)",
        "n_random-like": "layers in the random-like phase: the whole ESD is an MP bulk (count)",
        "n_bulk+spikes": "layers in the bulk+spikes phase: a few eigenvalues past an MP bulk (count)",
        "n_very-heavy-tailed": "layers in the very-heavy-tailed phase: a tail past the bulk with alpha < 2 (count)",
        "n_heavy-tailed": "layers in the heavy-tailed phase: a tail past the bulk with alpha >= 2 (count)",
        "num_params": "parameters stored in the checkpoint (count)",
        "tensors": "tensors stored in the checkpoint (count)",
        "nonfinite_tensors": "stored tensors holding a NaN or an infinity (count)",
        "seconds": "wall time to load and analyse the checkpoint (s)",
        "failed": "1 when the checkpoint failed, 0 otherwise (for --fail-on \"failed>0\")",
    },
    "compare.deltas": {
        "base": "the base model the update is measured from",
        "derived": "the model whose update dW = W_derived - W_base this row describes",
        "step": "training step of the derived checkpoint; empty for a list of models",
        "rel_size": "||dW||_F / ||W_base||_F: the update's size relative to the base matrix",
        "delta_frobenius": "||dW||_F, the update's Frobenius norm (weight units)",
        "stable_rank": "sum s^2 / s_max^2 over dW's singular values: how many directions carry the update's energy",
        "effective_rank": "exp of the entropy of dW's normalised singular values (Roy & Vetterli 2007): r for r "
                          "equal directions",
        "delta_rank": "singular values of dW above the rounding floor of the stored weights (count)",
        "k_eff": "principal angles compared: min(k, rank of the base, delta_rank) (count)",
        "angle_left_mean_deg": "mean principal angle between dW's top output directions and the base's top-k "
                               "(degrees; 0: inside the base's dominant subspace, 90: orthogonal to it)",
        "angle_left_min_deg": "smallest of those principal angles, output side (degrees)",
        "overlap_left": "mean cos^2 of the output-side angles: 1 inside the base's top-k subspace, 0 orthogonal",
        "overlap_left_null": "overlap_left a random subspace would have: k / N, N the output dimension (k: the larger "
                             "of the two subspaces compared)",
        "angle_right_mean_deg": "mean principal angle between dW's top input directions and the base's top-k "
                                "(degrees)",
        "angle_right_min_deg": "smallest of those principal angles, input side (degrees)",
        "overlap_right": "mean cos^2 of the input-side angles: 1 inside the base's top-k subspace, 0 orthogonal",
        "overlap_right_null": "overlap_right a random subspace would have: k / M, M the input dimension",
        "delta_alpha": "power-law exponent of the tail of dW's ESD (eigenvalues above the rounding floor); empty "
                       "for low-rank updates",
        "delta_phase": "phase of dW's ESD by the spectra rules; too-small for fewer than min_evals eigenvalues "
                       "above the floor",
        "delta_pl_trust": "whether the power law of dW's ESD is trusted, by the spectra rules",
        "delta_num_evals": "eigenvalues in dW's ESD, min(N, M) (count)",
        "delta_evals": "dW's eigenvalues above the rounding floor, ascending (quantiles when there are many)",
        "base_fingerprint": "sha256 of the base's weight files",
        "derived_fingerprint": "sha256 of the derived model's weight files",
    },
    "compare.overlaps": {
        "base": "the base model both task vectors are measured from",
        "a": "the first derived model (task vector tau_a = W_a - W_base)",
        "b": "the second derived model (task vector tau_b = W_b - W_base)",
        "cosine": "<tau_a, tau_b> / (||tau_a|| ||tau_b||) over the layer's elements: 0 for orthogonal updates",
        "subspace_overlap": "mean cos^2 of the principal angles between the two task vectors' top-k output "
                            "subspaces: 1 shared, 0 orthogonal",
        "null": "subspace_overlap random subspaces would have: k / N, N the output dimension (k: the larger of the "
                "two subspaces compared)",
        "k_eff": "principal angles compared: min(k, rank of either task vector) (count)",
        "base_fingerprint": "sha256 of the base's weight files",
        "a_fingerprint": "sha256 of model a's weight files",
        "b_fingerprint": "sha256 of model b's weight files",
    },
}
# The compare diagnostic's layer rows are the spectra diagnostic's metrics, so they share its words.
GLOSSARY["compare.layers"] = {c: GLOSSARY["spectra"][c] for c in (
    "alpha", "alpha_ci_low", "alpha_ci_high", "pl_trust", "phase", "stable_rank", "log_spectral_norm",
    "frobenius_norm_sq", "num_evals")}


def meaning(column: str, diagnostic: str = "", table: str = "") -> str | None:
    """What ``column`` of ``diagnostic``'s ``table`` means, or None when the glossary does not say."""
    scopes = [GLOSSARY.get(f"{diagnostic}.{table}", {}), GLOSSARY.get(diagnostic, {}), _TENSOR]
    for scope in scopes:
        if column in scope:
            return scope[column]
    for suffix in _SUFFIXES:
        base = column.removesuffix(suffix)
        if base != column and any(base in scope for scope in scopes):
            pattern = next((s[f"*{suffix}"] for s in scopes if f"*{suffix}" in s), None)
            if pattern:
                return pattern.format(base=base)
    return None


def legend(columns: Iterable[str], diagnostic: str = "", table: str = "") -> list[tuple[str, str]]:
    """``(column, meaning)`` for each of ``columns`` the glossary describes, in their order: a table's legend."""
    return [(c, text) for c in columns if (text := meaning(c, diagnostic, table)) is not None]
