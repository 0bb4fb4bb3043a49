"""INT8 dynamic quantization of the CTR graph, guarded by test AUC.

Dynamic quantization (ONNX Runtime's `quantize_dynamic`): MatMul/Gemm weights stored as
int8, activations quantized per call. Only the CTR graph: it is where serving time goes
(MEASURED.md); the encoder is small and its output is cached. The export scores the test
split with the fp32 and the int8 graph and refuses the int8 one when it loses more than
`max_auc_drop` AUC, unless forced; both AUCs go into the manifest either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxruntime.quantization import QuantType, quantize_dynamic

from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import GraphSession, cpu_session, split_auc
from queryrec.features.dataset import PreparedDataset
from queryrec.features.query_positives import QueryPositives
from queryrec.progress import say

MAX_AUC_DROP = 0.002


class QuantizationRefused(QueryRecError):
    """INT8 costs more AUC than allowed."""


def quantize_with_guard(
    ctr_path: Path,
    dataset: PreparedDataset,
    manifest: dict[str, Any],
    encoder: GraphSession | None,
    *,
    force: bool,
    max_auc_drop: float = MAX_AUC_DROP,
    query_positives: QueryPositives | None = None,
) -> dict[str, Any]:
    """Replace `ctr_path` by its INT8 version if the AUC guard allows; return the record."""
    int8_path = ctr_path.with_suffix(".int8.onnx")
    quantize_dynamic(ctr_path, int8_path, weight_type=QuantType.QInt8)
    say("[export] int8: scoring the test split with the fp32 and the int8 CTR graph")
    fp32, int8 = (
        split_auc(dataset, "test", manifest, encoder, cpu_session(path), query_positives)
        for path in (ctr_path, int8_path)
    )
    drop = fp32["auc"] - int8["auc"]
    record = {
        "mode": "int8",
        "method": "onnxruntime.quantization.quantize_dynamic, QInt8 weights, CTR graph only",
        "auc_fp32": fp32["auc"],
        "auc_int8": int8["auc"],
        "logloss_fp32": fp32["logloss"],
        "logloss_int8": int8["logloss"],
        "max_auc_drop": max_auc_drop,
        "forced": bool(force and drop > max_auc_drop),
    }
    say(f"[export] int8: test AUC {fp32['auc']:.4f} (fp32) -> {int8['auc']:.4f} (int8)")
    if drop > max_auc_drop and not force:
        int8_path.unlink()
        raise QuantizationRefused(
            f"int8 quantization lowers test AUC by {drop:.4f} ({fp32['auc']:.4f} -> "
            f"{int8['auc']:.4f}), more than {max_auc_drop}; not exported "
            "(--accept-int8-drop accepts it)"
        )
    int8_path.replace(ctr_path)
    return record
