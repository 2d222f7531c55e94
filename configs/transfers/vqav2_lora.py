"""VQAv2 with LoRA (or QLoRA) instead of full fine-tuning: the `vqav2` transfer's data and evals,
rank-16 adapters on the Gemma decoder's attention and MLP over a frozen base, and a learning rate
for adapters (LoRA's usual 1e-4 to 3e-4; full fine-tuning's 1e-5 barely moves them). Not a
published PaliGemma setting: the paper fine-tunes every weight.

    python train.py --config configs/transfers/vqav2_lora.py:res=224 --workdir /tmp/vqav2_lora \\
        --config.init=/ckpt/paligemma2-3b-pt-224 --config.tokenizer=/ckpt/tokenizer.model \\
        [--config.lora.quantize=int8]      # QLoRA: the frozen base stored as int8 (or int4)

The run writes WORKDIR/adapters/ (the adapters alone; its config names the base), which
infer.py and eval.py load with their base; `convert_checkpoint.py --merge_lora` merges them.
"""

from configs.transfers import vqav2


def get_config(arg=None):
  config = vqav2.get_config(arg)
  config.optimizer.lr = 2e-4
  config.optimizer.wd = 0.0
  config.model.remat = "full"
  config.lora = dict(rank=16, alpha=16.0, dropout=0.05, quantize="none", group_size=128,
                     targets=[r"llm/layers/(attn/(q|k|v|out)|mlp/(gate|up|down))/w"])
  return config
