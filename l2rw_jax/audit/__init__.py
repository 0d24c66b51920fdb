"""Beyond accuracy: audit a trained classifier (Stock & Cisse, ECCV 2018).

Four questions, each a module, all on the pure model interface of `l2rw_jax.models`
(`apply_fn`, `feature_fn`; see `l2rw_jax.audit.common`) and numpy arrays:

  mistakes      per-class/worst-class accuracy, confusion, top-k, ECE, explanations
  attacks       FGSM / PGD (on the logit margin) accuracy over epsilon, minimal adversarial eps
  criticism     prototypes and criticisms: adversarial robustness and MMD-critic
  label_issues  rankings of suspect training labels, precision@k / recall@k, the CSV
  sections      what each analysis takes (`Inputs`) and returns (`Section`: results, figures,
                notes), and the helpers they share
  mistakes_section, robustness_section, bias_section, label_issues_section, noise_section,
  trusted_set_section
                each analysis on the checked inputs -> a `Section`
  suspects_section  a card per suspect: the top of the suspects' ranking, each with its image,
                labels, recorded weights, ranks and nearest training neighbours
  figures       the sections' matplotlib figures as base64 PNG
  renderers     one HTML renderer per section (summary cards, body)
  ranking_quality  AUROC / average precision / precision@k of every ranking against is_noisy
  noise_estimate   the transition matrix from the trusted set (GLC) or the noisy set
                   (confident learning), and its error against a known one
  data_maps     per-example weight statistics over training, beside confidence / variability
  trusted_set   each clean example's exact leave-one-out influence on the L2RW weights
  report        report.html (the page around the renderers) + audit.json

`run_audit` runs the sections and writes the report; `audit_run(workdir)` audits a trained run's
workdir (`from_workdir`).
"""

from l2rw_jax.audit import attacks
from l2rw_jax.audit import bias_section
from l2rw_jax.audit import common
from l2rw_jax.audit import criticism
from l2rw_jax.audit import data_maps
from l2rw_jax.audit import figures
from l2rw_jax.audit import from_workdir
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import label_issues_section
from l2rw_jax.audit import mistakes
from l2rw_jax.audit import mistakes_section
from l2rw_jax.audit import noise_estimate
from l2rw_jax.audit import noise_section
from l2rw_jax.audit import ranking_quality
from l2rw_jax.audit import renderers
from l2rw_jax.audit import report
from l2rw_jax.audit import robustness_section
from l2rw_jax.audit import sections
from l2rw_jax.audit import suspects_section
from l2rw_jax.audit import trusted_set
from l2rw_jax.audit import trusted_set_section
from l2rw_jax.audit.attacks import AttackConfig
from l2rw_jax.audit.attacks import attack_batch
from l2rw_jax.audit.attacks import margin_loss
from l2rw_jax.audit.attacks import minimal_adversarial_epsilon
from l2rw_jax.audit.attacks import robust_accuracy_curve
from l2rw_jax.audit.common import Model
from l2rw_jax.audit.criticism import greedy_criticisms
from l2rw_jax.audit.criticism import greedy_prototypes
from l2rw_jax.audit.criticism import mmd_critic
from l2rw_jax.audit.criticism import robustness_prototypes
from l2rw_jax.audit.data_maps import data_map
from l2rw_jax.audit.from_workdir import audit_run
from l2rw_jax.audit.from_workdir import load_run
from l2rw_jax.audit.label_issues import find_label_issues
from l2rw_jax.audit.label_issues import precision_at_k
from l2rw_jax.audit.label_issues import recall_at_k
from l2rw_jax.audit.mistakes import confusion_matrix
from l2rw_jax.audit.mistakes import expected_calibration_error
from l2rw_jax.audit.mistakes import grad_cam
from l2rw_jax.audit.mistakes import has_conv_map
from l2rw_jax.audit.mistakes import integrated_gradients
from l2rw_jax.audit.mistakes import per_class_accuracy
from l2rw_jax.audit.mistakes import top_k_accuracy
from l2rw_jax.audit.noise_estimate import confident_transition
from l2rw_jax.audit.noise_estimate import empirical_transition
from l2rw_jax.audit.noise_estimate import glc_transition
from l2rw_jax.audit.noise_estimate import transition_error
from l2rw_jax.audit.ranking_quality import auroc
from l2rw_jax.audit.ranking_quality import average_precision
from l2rw_jax.audit.ranking_quality import score_rankings
from l2rw_jax.audit.run import default_config
from l2rw_jax.audit.run import run_audit
from l2rw_jax.audit.sections import Section
from l2rw_jax.audit.trusted_set import trusted_set_influence

__all__ = [
    "attacks",
    "bias_section",
    "common",
    "criticism",
    "data_maps",
    "figures",
    "from_workdir",
    "label_issues",
    "label_issues_section",
    "mistakes",
    "noise_estimate",
    "noise_section",
    "ranking_quality",
    "mistakes_section",
    "renderers",
    "report",
    "robustness_section",
    "sections",
    "suspects_section",
    "trusted_set",
    "trusted_set_section",
    "AttackConfig",
    "attack_batch",
    "margin_loss",
    "minimal_adversarial_epsilon",
    "robust_accuracy_curve",
    "Model",
    "greedy_criticisms",
    "greedy_prototypes",
    "mmd_critic",
    "robustness_prototypes",
    "data_map",
    "audit_run",
    "load_run",
    "find_label_issues",
    "precision_at_k",
    "recall_at_k",
    "confusion_matrix",
    "expected_calibration_error",
    "grad_cam",
    "has_conv_map",
    "integrated_gradients",
    "per_class_accuracy",
    "top_k_accuracy",
    "confident_transition",
    "empirical_transition",
    "glc_transition",
    "transition_error",
    "auroc",
    "average_precision",
    "score_rankings",
    "default_config",
    "run_audit",
    "Section",
    "trusted_set_influence",
]
