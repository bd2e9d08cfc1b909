"""Caption evaluation: offline COCO metrics, dataset readers, the ``ivl eval-caption`` command."""
