"""Fine-tune PaliGemma on your own JSONL files (big_vision's `forkme.py`): copy this file, edit
the numbers, run it.

1. Write `train.jsonl` and `val.jsonl`, one example per line, image paths relative to the file:
     {"image": "images/0001.jpg", "prefix": "caption en", "suffix": "A red bus on a bridge."}
   `prefix` is the prompt (any text: "caption en", "answer en what is on the table?",
   "detect cat"), `suffix` the target (a text or a list of texts; one is drawn per epoch).
   Put them in ~/data/forkme/ or pass `jsonl_dir=DIR`.
2. Get a pretrained checkpoint (the reference uses PaliGemma 2 3B pt 224; an HF folder works, or
   convert an npz with convert_checkpoint.py) and its tokenizer.model.
3. Check the sizes: text_len (TEXT_LEN below) must hold prefix + suffix tokens (+3 for bos, "\\n"
   and eos); longer rows are cut. The batch (32, sized for 4 x L4 in the reference) must divide by
   the number of devices.
4. Train:
     python train.py --config configs/transfers/forkme.py --workdir /tmp/forkme \
         --config.init=/ckpt/paligemma2-3b-pt-224 --config.tokenizer=/ckpt/tokenizer.model
   Override anything on the command line: --config.optimizer.lr=3e-6, --config.epochs=5,
   --config.input.batch_size=16, --config.input.members[0].image_dir=/data/images.
5. The final params land in /tmp/forkme/params; the evals write val predictions and the val
   perplexity (big_vision's `pplx` and `storepreds`) under the workdir; infer.py takes the params.

The final logit softcap is off for fine-tuning (the trainer's default with a checkpoint).
"""

from configs.transfers import common

TEXT_LEN = 128
HPARAMS = {224: common.Hparams(batch_size=32, lr=1e-5, epochs=15, wd=3e-7)}
TRAIN = [common.jsonl("train.jsonl", "template", prompt="{prefix}", reference_key="suffix")]
VAL = common.jsonl("val.jsonl", "template", prompt="{prefix}", reference_key="suffix")
EVALS = {
    "val_pplx": common.perplexity(VAL),
    "val_predictions": common.evaluation("exact_match", VAL),  # predictions.jsonl + exact match
}


def get_config(arg=None):
  return common.transfer_config(arg, name="forkme", hparams=HPARAMS, text_len=TEXT_LEN,
                                train=TRAIN, evals=EVALS, antialias=True)
