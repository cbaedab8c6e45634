import numpy as np, torch, odenet
from PIL import Image
from sklearn.datasets import load_digits
from odenet.errors import OdenetError
d = load_digits()
imgs = (d.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, white ink on black
model = odenet.load()
def up(a):  # a 2-pixel margin, then 4x bilinear: 48x48, as a scan of the same digit would be
    return np.asarray(Image.fromarray(np.pad(a, 2)).resize((48, 48), Image.BILINEAR))
xs, ys, refused = [], [], 0
for a, y in zip(imgs, d.target):
    try:
        xs.append(odenet.preprocess(up(a))); ys.append(y)
    except OdenetError:
        refused += 1
x = torch.cat(xs); ys = np.array(ys)
p = model.predict(x).argmax(1).numpy()
print(f"UCI digits: {len(d.target)} images, refused {refused}, accuracy on the rest {(p == ys).mean():.4f}, "
      f"on all (refused = wrong) {(p == ys).sum() / len(d.target):.4f}")
