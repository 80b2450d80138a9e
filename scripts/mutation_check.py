"""Plant known bugs one at a time in a temporary copy of the repository and check that the tests
catch each of them.

    python scripts/mutation_check.py              # every mutation, its own tests first, then the fast suite
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --only scratch_layer_decay hf_seams

A mutation replaces one exact piece of source text (it must occur exactly once, so a refactor that
moves the code makes the check fail loudly rather than test nothing). A mutation is "killed" when
pytest fails on the mutated copy; a "survivor" is a bug that no test noticed. The fast suite is
every test file except the notebook, reliability, benchmark, browser and distributed ones.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW = ("tests/test_notebooks.py", "tests/test_reliability.py", "tests/test_benchmarks.py", "tests/test_browser.py",
        "tests/test_distributed.py")

# name: (file, original text, mutated text, the test that should catch it: tried first, alone)
MUTATIONS = {
    "scratch_layer_decay": ("maehelpers/evaluate.py", "e.ft_scratch_layer_decay if scratch else e.ft_layer_decay",
                            "e.ft_layer_decay", "tests/test_evaluate.py::test_scratch_fine_tunes_without_layer_decay"),
    "psnr_floor_borrowed": ("maehelpers/metrics.py", "floor = to_display(model, imgs, torch.zeros_like(pred), mask)[2]",
                            "floor = torch.zeros_like(original)", "tests/test_evaluate.py::test_zero_decoder_scores_exactly_the_floor"),
    "hf_seams": ("maehelpers/metrics.py", "diff = (patch_laplacian(patches(pred), patch_size, c)",
                 "diff = (patch_laplacian(patches(pred), patch_size, c, 'replicate')", "tests/test_evaluate.py::test_hf_error_hand_value_inside_masked_patches_only"),
    "erasing_batch_shared": ("maehelpers/ft_augment.py",
                             "box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)",
                             "box = ((rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew))[:1]",
                             "tests/test_evaluate.py::test_randaugment_and_random_erasing_act_per_image"),
    "randaug_batch_shared": ("maehelpers/ft_augment.py",
                             "op = torch.randint(len(OPS), (n,), generator=generator, device=dev)",
                             "op = torch.randint(len(OPS), (1,), generator=generator, device=dev).expand(n)",
                             "tests/test_evaluate.py::test_randaugment_and_random_erasing_act_per_image"),
    "randaug_never_negated": ("maehelpers/ft_augment.py", "flip = torch.rand(n, generator=generator, device=dev) <= 0.5",
                              "flip = torch.zeros(n, dtype=torch.bool, device=dev)",
                              "tests/test_evaluate.py::test_batched_randaugment_and_erasing_are_distributed_as_torchvisions_per_image"),
    "randaug_blend_two_roundings": ("maehelpers/ft_augment.py", "return _to_u8(torch.addcmul(x * (1.0 + level), other, -level))",
                                    "return _to_u8(x * (1.0 + level) + other * (1.0 - (1.0 + level)))",
                                    "tests/test_evaluate.py::test_each_randaugment_op_is_torchvisions_at_every_magnitude_and_sign"),
    "monitor_casts_weights": ("maehelpers/monitor.py", "        model.eval()\n        bank, queries",
                              "        model.eval().to(torch.bfloat16).float()\n        bank, queries",
                              "tests/test_monitor.py::test_monitor_leaves_the_encoder_bit_identical_and_measures_the_encoder_of_its_step"),
    "monitor_wrong_queries": ("maehelpers/monitor.py", "queries.head(t.monitor_queries)", "bank.head(t.monitor_queries)",
                              "tests/test_monitor.py::test_monitor_leaves_the_encoder_bit_identical_and_measures_the_encoder_of_its_step"),
    "honest_view_leaks": ("maehelpers/metrics.py",
                          "seen_mean = (mean * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)",
                          "seen_mean = mean.mean(1, keepdim=True)",
                          "tests/test_evaluate.py::test_the_honest_view_borrows_nothing_from_the_removed_patches"),
    "verify_ft_at_default_budget": ("maehelpers/study/upkeep.py",
                                    '            settings.ft_epochs = records[key].get("ft_epochs") or settings.ft_epochs  # at the record\'s own budget\n',
                                    "", "tests/test_study.py::test_ablation_runner_tiny_records_skip_and_report"),
    "stale_eval_kept": ("maehelpers/pretrain.py", "if k not in EVAL_KEYS}", "}", "tests/test_evaluate.py::test_retrained_run_is_evaluated_again_not_shown_stale"),
    "eval_key_ignores_encoder": ("maehelpers/evaluate.py", 'base = {"encoder": encoder,',
                                 'base = {"encoder": "same",', "tests/test_evaluate.py::test_retrained_run_is_evaluated_again_not_shown_stale"),
    "epoch_sums_lost": ("maehelpers/pretrain.py", 'ckpt.get("epoch_loss", 0.0), ckpt.get("epoch_count", 0),',
                        "0.0, 0,", "tests/test_pretrain.py::test_epoch_loss_after_a_mid_epoch_resume_covers_the_whole_epoch"),
    "no_size_check": ("maehelpers/pretrain.py", "if key in ckpt and ckpt[key] != run[key]:", "if False:",
                      "tests/test_pretrain.py::test_resume_refuses_other_data_size_and_other_precision"),
    "bf16_everywhere": ("maehelpers/devices.py", "return torch.bfloat16 if major >= 8 else torch.float16",
                        "return torch.bfloat16", "tests/test_pretrain.py::test_mixed_precision_choice_follows_compute_capability"),
    "losses_under_autocast": ("maehelpers/losses.py", "with torch.autocast(imgs.device.type, enabled=False):",
                              "if True:", "tests/test_losses_schedules.py::test_loss_terms_are_computed_in_fp32_under_autocast"),
    "lock_ignored": ("maehelpers/runs.py", "if other.get(\"host\") == me[\"host\"] and not _pid_alive",
                     "if True or not _pid_alive", "tests/test_pretrain.py::test_a_run_folder_in_use_is_refused_naming_the_other_process"),
    "warmup_truncated": ("maehelpers/pretrain.py", "warmup_steps = t.epochs * steps_per_epoch, t.warmup_epochs * steps_per_epoch",
                         "warmup_steps = t.epochs * steps_per_epoch, int(t.warmup_epochs * steps_per_epoch)",
                         "tests/test_pretrain.py::test_fractional_warmup_follows_the_official_formula"),
    "curves_total_loss": ("maehelpers/viz.py", 'axes[0].plot(steps, [r[SHARED_TERM] for r in rows]',
                          'axes[0].plot(steps, [r["loss"] for r in rows]', "tests/test_evaluate.py::test_curves_compare_the_shared_term_and_keep_extra_terms_apart"),
    "missing_bar_zero": ("maehelpers/viz.py", "vals = [math.nan if r.get(metric) is None else r[metric] for r in rows]",
                         "vals = [r.get(metric) or 0.0 for r in rows]", "tests/test_evaluate.py::test_results_chart_draws_no_bar_for_a_missing_metric_and_shows_seed_spread"),
    "mean_pool_with_cls": ("maehelpers/model.py", "return x[:, 1:].mean(dim=1)", "return x.mean(dim=1)",
                           "tests/test_model.py::test_mean_pool_excludes_the_cls_token"),
    "laplacian_form_ignored": ("maehelpers/losses.py", 'if form == "replicate":', "if False:",
                               "tests/test_losses_schedules.py::test_replicate_laplacian_covers_border_pixels_hand_values"),
    "random_ratio_fixed": ("maehelpers/masking.py", "return start + (end - start) * u", "return end",
                           "tests/test_losses_schedules.py::test_random_ratio_draws_within_its_range_every_step"),
    "lowpass_ignored": ("maehelpers/losses.py", "target = model.target(gaussian_blur(imgs.float(), variant.target_blur))",
                        "target = model.target(imgs.float())", "tests/test_losses_schedules.py::test_lowpass_target_hand_values"),
    # the model
    "encoder_no_pos_embed": ("maehelpers/model.py", "        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]\n"
                             "        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)",
                             "        x = self.patch_embed(imgs)\n"
                             "        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)",
                             "tests/test_model.py::test_encoder_gives_each_visible_patch_its_own_position"),
    "decoder_not_unshuffled": ("maehelpers/model.py",
                               "x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))",
                               "x_ = x_", "tests/test_model.py::test_decoder_puts_every_prediction_at_its_own_position"),
    "decoder_no_pos_embed": ("maehelpers/model.py", "x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed",
                             "x = torch.cat([x[:, :1, :], x_], dim=1)", "tests/test_model.py::test_decoder_puts_every_prediction_at_its_own_position"),
    "sincos_h_first": ("maehelpers/model.py", "emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)",
                       "emb = torch.cat([sincos_1d(embed_dim // 2, rows), sincos_1d(embed_dim // 2, cols)], dim=1)",
                       "tests/test_model.py::test_sincos_pos_embed_hand_values"),
    "interpolation_transposed": ("maehelpers/model.py", "grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim)",
                                 "grid = grid.permute(0, 3, 2, 1).reshape(1, new * new, dim)",
                                 "tests/test_model.py::test_pos_embed_interpolation_keeps_rows_and_columns_apart"),
    # losses and schedules
    "mse_on_all_patches": ("maehelpers/losses.py", "return masked_mean(((pred - target) ** 2).mean(dim=-1), mask)",
                           "return ((pred - target) ** 2).mean()", "tests/test_losses_schedules.py::test_masked_mse_ignores_visible_patches"),
    "uniformity_unnormalised": ("maehelpers/losses.py", "    z = F.normalize(features.float(), dim=-1)\n    n = z.shape[0]",
                                "    z = features.float()\n    n = z.shape[0]", "tests/test_losses_schedules.py"),
    "schedule_ignores_frac": ("maehelpers/masking.py", "def linear(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:\n"
                              "    t = min(progress / frac, 1.0) if frac > 0 else 1.0",
                              "def linear(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:\n"
                              "    t = progress", "tests/test_losses_schedules.py::test_mask_schedules_hand_values"),
    # the training loop
    "lr_never_set": ("maehelpers/pretrain.py", '        group["lr"] = lr\n', "        pass\n",
                     "tests/test_pretrain.py::test_training_uses_the_scheduled_lr_and_mask_ratio_at_every_step"),
    "ratio_not_used": ("maehelpers/pretrain.py", "loss, parts, _, _ = objective(imgs, ratio, noise)",
                       "loss, parts, _, _ = objective(imgs, 0.75, noise)",
                       "tests/test_pretrain.py::test_training_uses_the_scheduled_lr_and_mask_ratio_at_every_step"),
    "same_noise_every_step": ("maehelpers/pretrain.py", "g = step_generator(cfg.seed, step, device)\n    imgs = augment",
                              "g = step_generator(cfg.seed, 0, device)\n    imgs = augment",
                              "tests/test_pretrain.py::test_training_uses_the_scheduled_lr_and_mask_ratio_at_every_step"),
    # data
    "crop_is_whole_image": ("maehelpers/data.py", "theta[:, 0, 0], theta[:, 0, 2] = w * flip, 2 * cx - 1",
                            "theta[:, 0, 0], theta[:, 0, 2] = flip, 0.0", "tests/test_data.py::test_random_resized_crop_really_crops"),
    # evaluation and metrics
    "knn_dot_product": ("maehelpers/probes.py", "rows = F.normalize(_on(train_x[start:start + train_chunk], device).float(), dim=1)",
                        "rows = _on(train_x[start:start + train_chunk], device).float()", "tests/test_evaluate.py::test_knn_hand_example"),
    "layer_decay_off_by_one": ("maehelpers/optim.py", '"lr_scale": layer_decay ** (num_layers - layer)}',
                               '"lr_scale": layer_decay ** (num_layers - layer + 1)}',
                               "tests/test_evaluate.py::test_layer_decay_gives_the_official_scale_at_every_depth"),
    "features_from_random_init": ("maehelpers/probes.py", "    model, cfg = load_encoder(enc_path)\n    feats = extract_features",
                                  "    model, cfg = load_encoder(enc_path)\n    model = build_model(cfg)\n    feats = extract_features",
                                  "tests/test_evaluate.py::test_probe_features_come_from_the_checkpoint_weights"),
    "psnr_ignores_mask": ("maehelpers/metrics.py", "mse = se / pixel_mask.flatten(1).sum(1).clamp_min(1)",
                          "mse = ((pred - target) ** 2).flatten(1).mean(1)", "tests/test_evaluate.py::test_psnr_hand_value_cap_and_mask"),
    "denorm_without_std": ("maehelpers/metrics.py", "pred = pred * (var + 1.0e-6) ** 0.5 + mean", "pred = pred + mean",
                           "tests/test_model.py::test_norm_pix_target_maps_back_to_the_image"),
    # the official-checkpoint quick look
    "official_bilinear_noise": ("maehelpers/official.py", 'mode="nearest"', 'mode="bilinear"',
                                "tests/test_official.py::test_matched_noise_by_hand"),
    "official_names_unchecked": ("maehelpers/official.py", "if missing or extra or wrong:", "if False:",
                                 "tests/test_official.py::test_a_cached_official_state_dict_loads_and_predicts_like_its_source"),
    "official_own_masks": ("maehelpers/official.py", "matched_noise(noise, official.patch_embed.grid_size)",
                           "torch.rand(len(images_u8), official.num_patches)",
                           "tests/test_official.py::test_side_by_side_masks_the_same_regions"),
    # the study's compute-matched reading
    "matched_linear_in_steps": ("maehelpers/study/flops.py", "math.log(target / s0) / math.log(s1 / s0)",
                                "(target - s0) / (s1 - s0)", "tests/test_study.py::test_compute_matched_reading_by_hand"),
    "flops_ignore_schedule": ("maehelpers/study/flops.py", "mask_ratio_at(step / steps, cfg.variant, u)",
                              "cfg.variant.mask_ratio", "tests/test_study.py::test_pretrain_flops_follow_the_visible_patches"),
    "flops_off_by_one_token": ("maehelpers/study/flops.py", "round(through_three(pts, keep + 1))", "round(through_three(pts, keep))",
                               "tests/test_study.py::test_pretrain_flops_follow_the_visible_patches"),
    "random_ratio_at_its_middle": ("maehelpers/study/flops.py", "draws = [(i + 0.5) / 16 for i in range(16)]",
                                   "draws = [0.5]", "tests/test_study.py::test_pretrain_flops_follow_the_visible_patches"),
    "matched_quadratic_is_linear": ("maehelpers/study/flops.py", '    if shape == "linear":', "    if True:",
                                    "tests/test_study.py::test_compute_matched_reading_by_hand"),
    "ft_budgets_overwrite": ("maehelpers/study/records.py", 'ft[r.get("ft_epochs")] = r["ft_top1"]',
                             'ft = {r.get("ft_epochs"): r["ft_top1"]}',
                             "tests/test_study.py::test_readme_tables_replace_only_their_block"),
    "rerun_ignores_recorded_threads": ("maehelpers/study/run.py", 'torch.set_num_threads(prior["threads"])', "pass",
                                       "tests/test_study.py::test_fine_tuning_a_recorded_run_after_its_folder_is_gone_pretrains_it_again_identically"),
    "rerun_encoder_unchecked": ("maehelpers/study/run.py", "    if differ:\n        raise RuntimeError(f\"{key}", "    if False:\n        raise RuntimeError(f\"{key}",
                                "tests/test_study.py::test_fine_tuning_a_recorded_run_after_its_folder_is_gone_pretrains_it_again_identically"),
    "verdict_ignores_registered": ("maehelpers/study/verdict.py", "    if done >= total:  # the registered", "    if False:  # the registered",
                                   "tests/test_study.py::test_verdict_states_the_registered_claims_once_the_heldout_stage_is_complete"),
    "verdict_hides_interactions": ("maehelpers/study/heldout.py", 'found = [e for e in inter if f["effects"][e]["claim"].startswith("detected")]',
                                   "found = []", "tests/test_study.py::test_heldout_verdict_words_each_claim_with_its_interval_and_holm_correction"),
    "eval_record_overwrites_provenance": ("maehelpers/study/run.py", "    if reused:  # the pretraining's", "    if False:  # the pretraining's",
                                          "tests/test_study.py::test_ablation_runner_tiny_records_skip_and_report"),
    "verify_skips_fine_tuning": ("maehelpers/study/upkeep.py", '"knn_top1_mean", "knn_top1_cls", *tuned):',
                                 '"knn_top1_mean", "knn_top1_cls"):',
                                 "tests/test_study.py::test_ablation_runner_tiny_records_skip_and_report"),
    # the README's study tables
    "readme_budget_wrong_diff": ("maehelpers/study/tables.py", 'fmt_diff(r, "lp_top1_mean"),\n                   fmt_value(r, "knn_top1_cls")',
                                 'fmt_diff(r, "knn_top1_mean"),\n                   fmt_value(r, "knn_top1_cls")',
                                 "tests/test_study.py::test_docs_study_blocks_are_the_committed_records"),
    "ft_seeds_from_all_runs": ("maehelpers/study/tables.py", 'str(len(f["seeds"]))', 'str(len(r["seeds"]))',
                               "tests/test_study.py::test_readme_tables_replace_only_their_block"),
    "readme_scratch_unlabelled": ("maehelpers/study/tables.py", '"scratch, no layer-wise decay" if r["arm"] == "random" else ',
                                  "", "tests/test_study.py::test_readme_tables_replace_only_their_block"),
    # the GPU path, proved on the CPU (tests/test_gpu_path.py)
    "uniformity_pairs_wrong": ("maehelpers/losses.py", "upper = torch.ones(n, n, dtype=torch.bool, device=z.device).triu(1)",
                               "upper = torch.ones(n, n, dtype=torch.bool, device=z.device)",
                               "tests/test_gpu_path.py::test_wang_isola_uniformity_from_one_matmul_has_the_pairwise_values_and_gradients"),
    "accum_not_averaged": ("maehelpers/pretrain.py", "scaler.scale(loss / accum).backward()", "scaler.scale(loss).backward()",
                           "tests/test_gpu_path.py::test_accumulated_micro_batch_gradients_add_up_to_the_whole_batch_gradient"),
    "rank_draws_own_crops": ("maehelpers/data.py", "n, dev, rows = batch or x.shape[0], x.device, rows or slice(None)",
                             "n, dev, rows = x.shape[0], x.device, slice(None)",
                             "tests/test_gpu_path.py::test_a_rank_or_micro_batch_resamples_only_its_rows_with_the_whole_batchs_crops"),
    "no_resume_across_amp": ("maehelpers/pretrain.py", 'if old != new and "fp32" in (old, new):', "if old != new:",
                             "tests/test_gpu_path.py::test_fp16_and_bf16_checkpoints_resume_across_and_record_it_but_fp32_does_not"),
    "scale_collapse_ignored": ("maehelpers/train_log.py", "        if scale < 1:\n", "        if scale < 0:\n",
                               "tests/test_gpu_path.py::test_a_collapsing_fp16_loss_scale_stops_the_run_and_skipped_steps_are_counted"),
    "eval_ignores_amp": ("maehelpers/probes.py", "dtype = amp_dtype(device, amp)\n    out = {pool: []", "dtype = amp_dtype(device)\n    out = {pool: []",
                         "tests/test_gpu_path.py::test_evaluation_follows_train_amp"),
    "knn_chunks_lose_offset": ("maehelpers/probes.py", "        idx = idx + start\n", "",
                               "tests/test_gpu_path.py::test_streamed_raw_pixels_give_the_whole_matrix_numbers"),
    "backend_from_machine": ("maehelpers/distributed.py", "dist.init_process_group(backend_for(device or torch.device(\"cpu\")),",
                             "dist.init_process_group(\"nccl\" if torch.cuda.is_available() else \"gloo\",",
                             "tests/test_gpu_path.py::test_world_takes_its_backend_from_the_device_asked_for_not_from_the_machine"),
    "every_rank_downloads": ("maehelpers/pretrain.py", "data = agreed(w, lambda: locked(w.size > 1, data_root,",
                             "data = agreed(w, lambda: locked(False, data_root,",
                             "tests/test_gpu_path.py::test_one_process_per_machine_downloads_and_the_others_wait_outside_any_collective"),
    "labels_copied_per_step": ("maehelpers/finetune.py", "x, y = augmenter(x01, labels[idx.to(device, non_blocking=True)])",
                               "x, y = augmenter(x01, train.labels[idx].to(device))",
                               "tests/test_gpu_path.py::test_fine_tuning_copies_labels_to_the_device_once_not_per_step"),
    "feature_cache_ignores_precision": ("maehelpers/probes.py",
                                        'f"{split}_{dat}_{enc}_{precision_name(amp_dtype(pick_device(device), amp))}.pt"',
                                        'f"{split}_{dat}_{enc}_fp32.pt"',
                                        "tests/test_gpu_path.py::test_feature_cache_is_keyed_by_precision_and_the_study_recomputes_in_the_runs"),
    "schedule_draw_after_the_crops": ("maehelpers/pretrain.py", "mask_ratio_at(step / total_steps, cfg.variant, schedule_draw(cfg.seed, step))",
                                      "mask_ratio_at(step / total_steps, cfg.variant, torch.rand(1, generator=g).item())",
                                      "tests/test_gpu_path.py::test_the_random_schedules_draw_does_not_depend_on_the_batch_or_the_device"),
    "masked_logsumexp_keeps_the_diagonal": ("maehelpers/losses.py", "x.masked_fill(~upper, -math.inf)",
                                            "x.masked_fill(~(upper | torch.eye(len(x), dtype=torch.bool, device=x.device)), -math.inf)",
                                            "tests/test_losses_schedules.py::test_masked_logsumexp_has_the_value_and_gradient_of_the_indexed_one"),
    "ranks_decide_alone": ("maehelpers/pretrain.py", "    if len(set(seen)) > 1:\n", "    if False:\n",
                           "tests/test_gpu_path.py::test_ranks_that_see_different_checkpoints_refuse_together_instead_of_diverging"),
    # the study's statistics and the registry (tests/test_study.py, tests/test_losses_schedules.py)
    "holm_not_monotone": ("maehelpers/study/stats.py", "running = max(running, min(1.0, (m - i) * p))",
                          "running = min(1.0, (m - i) * p)", "tests/test_study.py::test_holm_by_hand"),
    "factorial_half_coded": ("maehelpers/study/heldout.py", "math.prod(1 if lv else -1", "math.prod(1 if lv else 0",
                             "tests/test_study.py::test_factorial_contrasts_by_hand"),
    "registration_date_ignored": ("maehelpers/study/records.py", "    if early:\n", "    if False:\n",
                                  "tests/test_study.py::test_heldout_records_before_the_registration_are_refused"),
    "bootstrap_resamples_seeds_apart": ("maehelpers/study/stats.py", "per_image[rng.integers(0, n, n)].mean()",
                                        "(per_image[rng.integers(0, n, n)] - per_image[rng.integers(0, n, n)] + per_image).mean()",
                                        "tests/test_study.py::test_bootstrap_over_images_by_hand"),
    "mde_normal_shortcut": ("maehelpers/study/stats.py", "    if se <= 0:\n        return 0.0\n",
                            "    if se <= 0:\n        return 0.0\n    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * se\n",
                            "tests/test_study.py::test_detectable_effect_is_what_a_t_test_detects_80_percent_of_the_time"),
    "combined_drops_the_images": ("maehelpers/study/stats.py", "    v = v_seed + se_img ** 2\n", "    v = v_seed\n",
                                  "tests/test_study.py::test_combined_interval_by_hand"),
    "first_date_is_the_last": ("maehelpers/study/records.py", 'out.setdefault((r["arm"], r["seed"], r["steps"]), r["date"])',
                               'out[(r["arm"], r["seed"], r["steps"])] = r["date"]',
                               "tests/test_study.py::test_heldout_records_before_the_registration_are_refused"),
    "winners_curse_counts_later_arms": ("maehelpers/study/exploratory.py",
                                        '            screened = {a for a in screened if first.get((a, 0, steps), "") <= chosen}\n',
                                        "", "tests/test_study.py::test_docs_study_blocks_are_the_committed_records"),
    "long_holm_on_seed_p": ("maehelpers/study/long.py", 'adjusted = holm({k: v["combined"]["p"] for k, v in tested.items()})',
                            'adjusted = holm({k: v["p"] for k, v in tested.items()})',
                            "tests/test_study.py::test_long_stage_analysis_tests_seven_hypotheses_with_the_combined_interval_and_words_the_verdict"),
    "long_verdict_passes_backwards": ("maehelpers/study/long.py", 'if "L3" in h and passes(h["L3"]) != "passes":',
                                      'if "L3" in h and passes(h["L3"]) == "passes":',
                                      "tests/test_study.py::test_long_stage_analysis_tests_seven_hypotheses_with_the_combined_interval_and_words_the_verdict"),
    "raw_pixels_probe_seed_ignored": ("maehelpers/study/run.py", "*data, seed=seed, device=settings.device)",
                                      "*data, seed=0, device=settings.device)",
                                      "tests/test_study.py::test_heldout_records_keep_fine_tuning_and_raw_pixel_bits_and_the_monitor_curve"),
    "workers_share_a_run": ("maehelpers/study/stages.py", "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
                            "tests/test_study.py::test_workers_claim_different_runs_and_free_them"),
    "term_weight_ignored": ("maehelpers/losses.py", "total = total + weight * parts[name]", "total = total + parts[name]",
                            "tests/test_losses_schedules.py::test_a_term_from_a_notebook_cell_reaches_the_gradient_and_is_named_in_the_config"),
    # exports and TensorBoard (tests/test_export.py, tests/test_pretrain.py)
    "hf_qkv_order": ("maehelpers/export.py", 'zip(v.chunk(3, dim=0), sub["qkv"])',
                     'zip(reversed(v.chunk(3, dim=0)), sub["qkv"])',
                     "tests/test_export.py::test_hugging_face_round_trip_gives_our_loss_prediction_and_mask"),
    "timm_without_final_norm": ("maehelpers/export.py", "    state = encoder_state_dict(model)\n",
                                "    state = {k: (v * 0 + 1 if k == 'norm.weight' else v) for k, v in encoder_state_dict(model).items()}\n",
                                "tests/test_export.py::test_timm_encoder_gives_our_features_and_interpolates_to_another_size"),
    "timm_config_heads_halved": ("maehelpers/export.py", '"num_heads": m.num_heads,', '"num_heads": max(1, m.num_heads // 2),',
                                 "tests/test_export.py::test_timm_encoder_gives_our_features_and_interpolates_to_another_size"),
    "timm_config_without_classifier": ("maehelpers/export.py", '"num_classes": 0, "classifier": "head",', '"num_classes": 0,',
                                       "tests/test_export.py::test_timm_encoder_gives_our_features_and_interpolates_to_another_size"),
    "board_every_other_row": ("maehelpers/train_log.py", '                    if key in row:\n',
                              '                    if key in row and row["step"] % 2:\n',
                              "tests/test_pretrain.py::test_tensorboard_logs_are_written_and_read_back_and_runs_go_on_without_the_package"),
}


def run_pytest(copy: Path, targets, timeout: int) -> bool:
    """True when the tests fail (the mutation is killed)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *targets]
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's package, not an installed one
    try:
        out = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return True
    return out.returncode != 0


def check(name: str, copy: Path, timeout: int) -> tuple[str, float]:
    path, old, new, first = MUTATIONS[name]
    source = (copy / path).read_text()  # the snapshot, so edits made meanwhile do not mix in
    if source.count(old) != 1:
        return f"STALE (the text to mutate occurs {source.count(old)} times in {path})", 0.0
    (copy / path).write_text(source.replace(old, new))
    t0 = time.time()
    try:
        if run_pytest(copy, [first], timeout):
            return f"killed by {first}", time.time() - t0
        fast = [str(p.relative_to(copy)) for p in sorted((copy / "tests").glob("test_*.py"))
                if str(p.relative_to(copy)) not in SLOW]
        return ("killed by the fast suite" if run_pytest(copy, fast, timeout) else "SURVIVED"), time.time() - t0
    finally:
        (copy / path).write_text(source)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(MUTATIONS))
    p.add_argument("--list", action="store_true")
    p.add_argument("--timeout", type=int, default=900, help="seconds per pytest call")
    args = p.parse_args(argv)
    if args.list:
        for name, (path, old, new, _) in MUTATIONS.items():
            print(f"{name:28s} {path}: {old!r} -> {new!r}")
        return 0
    survivors, verdicts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "runs", "data", "*.egg-info", "__pycache__"))
        for name in args.only or MUTATIONS:
            verdict, seconds = check(name, copy, args.timeout)
            verdicts[name] = verdict
            print(f"{name:28s} {verdict} ({seconds:.0f} s)", flush=True)
            if not verdict.startswith("killed"):
                survivors.append(name)
    print(f"{len(survivors)} of {len(args.only or MUTATIONS)} not killed: {', '.join(survivors) or 'none'}")
    write_result(list(args.only or MUTATIONS), verdicts, survivors)
    return 1 if survivors else 0


def write_result(ran: list, verdicts: dict, survivors: list) -> None:
    """benchmarks/results/mutation_check.json: what ran, each verdict, the survivors, the commit and date
    (docs/testing.md points here instead of quoting a tally that would go stale)."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_commit": commit + (" (uncommitted changes)" if dirty else ""),
           "mutations": len(MUTATIONS), "ran": len(ran), "killed": len(ran) - len(survivors), "survivors": survivors,
           "verdicts": verdicts, "command": "python scripts/mutation_check.py " + " ".join(sys.argv[1:])}
    path = ROOT / "benchmarks" / "results" / "mutation_check.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
