"""Progress bar, CSV + TensorBoard logs and the loss-curve PNG (rank 0 only)."""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "step_time_s", "elapsed_s")


class RunLog:
    def __init__(self, output_dir: Path, total_steps: int, start_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.csv_path = Path(output_dir) / "train_log.csv"
        self.rows: list[dict] = []
        self.bar = None
        self.tb = None
        if not enabled:
            return
        if start_step and self.csv_path.is_file():
            # On resume keep what was logged up to the checkpoint; later rows are replayed.
            with open(self.csv_path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        with open(self.csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is optional
            self.tb = None
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with open(self.csv_path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS).writerow(row)
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def plot(self, png: Path) -> Path | None:
        if not self.enabled or not self.rows:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        steps = [int(r["step"]) for r in self.rows]
        losses = [float(r["loss"]) for r in self.rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, losses, lw=1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title("finetune loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
        return png
