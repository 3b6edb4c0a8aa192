// fastlenet demo page: draw a digit, prepare it as `fastlenet predict` does, run the
// model's forward pass, show the class probabilities and the feature maps.
//
// Shapes follow fastlenet: an image is one sample (C, H, W) stored row-major in a
// Float64Array; weights keep PyTorch's shapes, conv (K, C, KH, KW) and linear
// (OUT, IN). Everything is computed in float64 (fastlenet computes in float32; the
// probabilities agree to about 1e-6).
"use strict";

(function () {
  const MODEL = JSON.parse(document.getElementById("model").textContent);
  const P = MODEL.imageprep; // constants of fastlenet/imageprep.py
  const DEFAULTS = { pen: 18, showMaps: true };
  const MAP_KINDS = ["conv2d", "maxpool2d", "avgpool2d", "relumaxpool2d"]; // the layers whose maps are shown

  function floats(b64) {
    if (b64 === null) return null;
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Float32Array(bytes.buffer);
  }
  for (const layer of MODEL.layers) {
    for (const key of ["weight", "bias", "running_mean", "running_var"]) {
      if (key in layer) layer[key] = floats(layer[key]);
    }
  }

  // ------------------------------------------------------------ imageprep, steps 1-7
  // Each function is the one of the same name in fastlenet/imageprep.py, on (H, W)
  // row-major Float64Arrays, with the same arithmetic in the same order, so that the
  // 28x28 digit comes out equal. Python's round() and NumPy's rint round half to even.

  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  // Step 1 for an opaque canvas: Pillow's "L" conversion, L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
  function toGrayscale(rgba, n) {
    const gray = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      gray[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
    }
    return gray;
  }

  function median(values) {
    const s = Float64Array.from(values).sort();
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  function madSigma(r) {
    const med = median(r);
    return 1.4826 * median(r.map((v) => Math.abs(v - med)));
  }

  // NumPy's percentile, method "linear", of an unsorted array.
  function percentile(values, q) {
    const s = Float64Array.from(values).sort();
    const n = s.length;
    const virtual = (n - 1) * (q / 100);
    if (virtual >= n - 1) return s[n - 1];
    const lo = Math.floor(virtual);
    const a = s[lo], b = s[lo + 1], t = virtual - lo;
    const diff = b - a;
    return t >= 0.5 ? b - diff * (1 - t) : a + diff * t;
  }

  // Least squares fit of the plane c0 + c1 x + c2 y to the points (x, y, v), by the
  // normal equations (3x3, Cramer's rule).
  function fitPlane(xs, ys, vs) {
    let n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0, syy = 0, sv = 0, sxv = 0, syv = 0;
    for (let i = 0; i < vs.length; i++) {
      const x = xs[i], y = ys[i], v = vs[i];
      n += 1; sx += x; sy += y; sxx += x * x; sxy += x * y; syy += y * y;
      sv += v; sxv += x * v; syv += y * v;
    }
    const det3 = (a, b, c, d, e, f, g, h, k) => a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g);
    const det = det3(n, sx, sy, sx, sxx, sxy, sy, sxy, syy);
    return [det3(sv, sx, sy, sxv, sxx, sxy, syv, sxy, syy) / det,
            det3(n, sv, sy, sx, sxv, sxy, sy, syv, syy) / det,
            det3(n, sx, sv, sx, sxx, sxv, sy, sxy, syv) / det];
  }

  function subtractPaper(gray, h, w) {
    const k = Math.max(1, roundHalfEven(0.05 * Math.min(h, w)));
    const xs = [], ys = [], vs = [];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (y < k || y >= h - k || x < k || x >= w - k) { xs.push(x); ys.push(y); vs.push(gray[y * w + x]); }
      }
    }
    let coef = fitPlane(xs, ys, vs);
    const resid = vs.map((v, i) => v - (coef[0] + coef[1] * xs[i] + coef[2] * ys[i]));
    const med = median(resid), limit = 3 * madSigma(resid);
    const kx = [], ky = [], kv = [];
    resid.forEach((r, i) => { if (Math.abs(r - med) <= limit) { kx.push(xs[i]); ky.push(ys[i]); kv.push(vs[i]); } });
    coef = fitPlane(kx, ky, kv);
    const sigma = madSigma(kv.map((v, i) => v - (coef[0] + coef[1] * kx[i] + coef[2] * ky[i])));
    const diff = new Float64Array(h * w);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) diff[y * w + x] = gray[y * w + x] - (coef[0] + coef[1] * x + coef[2] * y);
    }
    return [diff, sigma];
  }

  function makeInkBright(diff, sigma) {
    const t = P.NOISE_SIGMAS * sigma;
    let dark = 0, bright = 0;
    for (const d of diff) { dark += Math.max(-d - t, 0); bright += Math.max(d - t, 0); }
    return dark > bright ? diff.map((d) => -d) : diff;
  }

  function blur3Max(a, h, w) {
    let peak = -Infinity;
    const at = (y, x) => a[Math.min(Math.max(y, 0), h - 1) * w + Math.min(Math.max(x, 0), w - 1)];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let s = 0;
        for (let i = -1; i <= 1; i++) for (let j = -1; j <= 1; j++) s += at(y + i, x + j);
        peak = Math.max(peak, s / 9);
      }
    }
    return peak;
  }

  function stretchInk(diff, sigma, h, w) {
    const ink = diff.map((d) => Math.max(d - P.NOISE_SIGMAS * sigma, 0));
    const peak = blur3Max(ink, h, w);
    if (peak < P.MIN_CONTRAST) return null;
    const level = percentile(ink.filter((v) => v > peak / 2), 90);
    const scale = 255 / level;
    return ink.map((v) => Math.min(Math.max(v * scale, 0), 255));
  }

  // [start, stop) of the ink along one axis, skipping islands of lines lighter than
  // SPECK_SHARE of the heaviest island.
  function span(profile) {
    const islands = [];
    for (let i = 0; i < profile.length; i++) {
      if (profile[i] > 0 && (i === 0 || profile[i - 1] === 0)) islands.push([i, i, 0]);
      if (profile[i] > 0) { const last = islands[islands.length - 1]; last[1] = i + 1; last[2] += profile[i]; }
    }
    const most = Math.max(...islands.map((s) => s[2]));
    const big = islands.filter((s) => s[2] >= P.SPECK_SHARE * most);
    return [big[0][0], big[big.length - 1][1]];
  }

  function cropToInk(ink, h, w) {
    const rows = new Array(h).fill(0), cols = new Array(w).fill(0);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) if (ink[y * w + x] > P.INK_FRACTION * 255) { rows[y]++; cols[x]++; }
    }
    const [top, bottom] = span(rows), [left, right] = span(cols);
    const ch = bottom - top, cw = right - left, out = new Float64Array(ch * cw);
    for (let y = 0; y < ch; y++) for (let x = 0; x < cw; x++) out[y * cw + x] = ink[(y + top) * w + x + left];
    return [out, ch, cw];
  }

  // Pillow's resize of a mode "F" image with the Lanczos filter (libImaging/Resample.c):
  // separable, horizontal pass first, float32 pixels, float64 weights normalised to sum 1.
  function sinc(x) {
    if (x === 0) return 1;
    x *= Math.PI;
    return Math.sin(x) / x;
  }
  function lanczos(x) { return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0; }

  function coefficients(inSize, outSize) {
    const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = 3 * filterscale;
    const rows = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale, ss = 1 / filterscale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      const k = [];
      let ww = 0;
      for (let x = 0; x < xmax; x++) { const v = lanczos((x + xmin - center + 0.5) * ss); k.push(v); ww += v; }
      rows.push({ xmin, k: ww !== 0 ? k.map((v) => v / ww) : k });
    }
    return rows;
  }

  function resizeLanczos(src, h, w, oh, ow) {
    if (oh === h && ow === w) return Float32Array.from(src);
    const vert = coefficients(h, oh);
    let img = Float32Array.from(src), iw = w, first = 0;
    if (ow !== w) {
      const horiz = coefficients(w, ow);
      first = vert[0].xmin;
      const last = vert[oh - 1].xmin + vert[oh - 1].k.length;
      const tmp = new Float32Array((last - first) * ow);
      for (let y = 0; y < last - first; y++) {
        for (let xx = 0; xx < ow; xx++) {
          const { xmin, k } = horiz[xx];
          let ss = 0;
          for (let x = 0; x < k.length; x++) ss += img[(y + first) * iw + x + xmin] * k[x];
          tmp[y * ow + xx] = ss;
        }
      }
      img = tmp; iw = ow;
    }
    if (oh === h) return img;
    const out = new Float32Array(oh * iw);
    for (let yy = 0; yy < oh; yy++) {
      const { xmin, k } = vert[yy];
      for (let x = 0; x < iw; x++) {
        let ss = 0;
        for (let y = 0; y < k.length; y++) ss += img[(y + xmin - first) * iw + x] * k[y];
        out[yy * iw + x] = ss;
      }
    }
    return out;
  }

  function fitBox(ink, h, w) {
    const s = P.BOX / Math.max(h, w);
    const oh = Math.max(1, roundHalfEven(h * s)), ow = Math.max(1, roundHalfEven(w * s));
    const box = Float64Array.from(resizeLanczos(ink, h, w, oh, ow), (v) => Math.max(v, 0));
    let peak = 0;
    for (const v of box) peak = Math.max(peak, v);
    const scale = 255 / peak;
    return [box.map((v) => Math.min(Math.max(v * scale, 0), 255)), oh, ow];
  }

  function centerOfMassField(box, h, w) {
    let total = 0, sy = 0, sx = 0;
    const rowSums = new Float64Array(h), colSums = new Float64Array(w);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) { rowSums[y] += box[y * w + x]; colSums[x] += box[y * w + x]; }
    for (const v of box) total += v;
    rowSums.forEach((v, y) => { sy += v * y; });
    colSums.forEach((v, x) => { sx += v * x; });
    const F = P.FIELD, half = Math.floor(F / 2);
    const top = Math.min(Math.max(roundHalfEven(half - sy / total), 0), F - h);
    const left = Math.min(Math.max(roundHalfEven(half - sx / total), 0), F - w);
    const field = new Uint8Array(F * F);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) field[(y + top) * F + x + left] = roundHalfEven(box[y * w + x]);
    return field;
  }

  // Steps 1-7 (imageprep.digit_from_array after to_grayscale): canvas pixels -> 28x28
  // uint8 digit, or null when no ink stands out. The canvas is 280x280, under
  // imageprep.MAX_SIDE, so step 1 never shrinks it.
  function digitFromCanvas(rgba, h, w) {
    const gray = toGrayscale(rgba, h * w);
    const [diff, sigma] = subtractPaper(gray, h, w);
    const ink = stretchInk(makeInkBright(diff, sigma), sigma, h, w);
    if (ink === null) return null;
    const [cropped, ch, cw] = cropToInk(ink, h, w);
    const [box, bh, bw] = fitBox(cropped, ch, cw);
    return centerOfMassField(box, bh, bw);
  }

  // fastlenet.data.preprocess: x = (v / 255 - mean) / std rounded to float32, padded
  // with the value of a 0 pixel.
  function preprocess(digit) {
    const table = Array.from({ length: 256 }, (_, v) => Math.fround((v / 255 - MODEL.mean) / MODEL.std));
    const pad = MODEL.pad, side = P.FIELD + 2 * pad, x = new Float64Array(side * side).fill(table[0]);
    for (let y = 0; y < P.FIELD; y++) for (let c = 0; c < P.FIELD; c++) x[(y + pad) * side + c + pad] = table[digit[y * P.FIELD + c]];
    return x;
  }

  // ------------------------------------------------------------ the forward pass
  // One function per layer kind: (layer, x, in_shape) -> y of layer.out_shape.
  const FORWARD = {
    conv2d(L, x, [C, H, W]) {
      const [K, OH, OW] = L.out_shape, R = L.kernel, s = L.stride, p = L.padding;
      const y = new Float64Array(K * OH * OW);
      for (let k = 0; k < K; k++) {
        const b = L.bias ? L.bias[k] : 0;
        for (let i = 0; i < OH; i++) {
          for (let j = 0; j < OW; j++) {
            let sum = b;
            for (let c = 0; c < C; c++) {
              for (let u = 0; u < R; u++) {
                const r = i * s + u - p;
                if (r < 0 || r >= H) continue;
                for (let v = 0; v < R; v++) {
                  const q = j * s + v - p;
                  if (q < 0 || q >= W) continue;
                  sum += L.weight[((k * C + c) * R + u) * R + v] * x[(c * H + r) * W + q];
                }
              }
            }
            y[(k * OH + i) * OW + j] = sum;
          }
        }
      }
      return y;
    },
    maxpool2d(L, x, shape) { return pool(L, x, shape, (w) => Math.max(...w)); },
    relumaxpool2d(L, x, shape) { return pool(L, x, shape, (w) => Math.max(0, ...w)); }, // max(relu) = relu(max)
    avgpool2d(L, x, shape) { return pool(L, x, shape, (w) => w.reduce((a, b) => a + b, 0) / w.length); },
    linear(L, x, [IN]) {
      const OUT = L.out_shape[0], y = new Float64Array(OUT);
      for (let o = 0; o < OUT; o++) {
        let sum = L.bias ? L.bias[o] : 0;
        for (let i = 0; i < IN; i++) sum += L.weight[o * IN + i] * x[i];
        y[o] = sum;
      }
      return y;
    },
    // eval mode: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, per channel
    batchnorm(L, x, shape) {
      const C = shape[0], per = x.length / C, y = new Float64Array(x.length);
      for (let c = 0; c < C; c++) {
        const inv = 1 / Math.sqrt(L.running_var[c] + L.eps);
        for (let i = c * per; i < (c + 1) * per; i++) y[i] = (x[i] - L.running_mean[c]) * inv * L.weight[c] + L.bias[c];
      }
      return y;
    },
    relu(L, x) { return x.map((v) => (v > 0 ? v : 0)); },
    tanh(L, x) { return x.map(Math.tanh); },
    sigmoid(L, x) { return x.map((v) => (1 + Math.tanh(v / 2)) / 2); }, // never overflows
    flatten(L, x) { return x; }, // (C, H, W) row-major is already PyTorch's feature order
    dropout(L, x) { return x; }, // the identity in eval mode
  };

  function pool(L, x, [C, H, W], reduce) {
    const [, OH, OW] = L.out_shape, n = L.size, s = L.stride, y = new Float64Array(C * OH * OW);
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          const window = [];
          for (let u = 0; u < n; u++) for (let v = 0; v < n; v++) window.push(x[(c * H + i * s + u) * W + j * s + v]);
          y[(c * OH + i) * OW + j] = reduce(window);
        }
      }
    }
    return y;
  }

  // -> { logits, probabilities, maps: [{label, shape, data}] for conv and pool layers }
  function forward(input) {
    let x = input;
    const maps = [];
    for (const L of MODEL.layers) {
      x = FORWARD[L.kind](L, x, L.in_shape);
      if (MAP_KINDS.includes(L.kind)) {
        maps.push({ label: L.label, shape: L.out_shape, data: x });
      }
    }
    const top = Math.max(...x), exp = Array.from(x, (z) => Math.exp(z - top));
    const total = exp.reduce((a, b) => a + b, 0);
    return { logits: Array.from(x), probabilities: exp.map((e) => e / total), maps };
  }

  // ------------------------------------------------------------ drawing
  const pad = document.getElementById("pad"), ink = pad.getContext("2d", { willReadFrequently: true });
  const penInput = document.getElementById("pen"), showMaps = document.getElementById("show-maps");
  let last = null, pending = false, result = null, waiters = [];

  function blank() {
    ink.fillStyle = "#000";
    ink.fillRect(0, 0, pad.width, pad.height); // opaque black: the paper of imageprep
  }

  function point(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  }

  function stroke(from, to) {
    ink.strokeStyle = "#fff";
    ink.fillStyle = "#fff";
    ink.lineWidth = Number(penInput.value);
    ink.lineCap = "round";
    ink.lineJoin = "round";
    if (from[0] === to[0] && from[1] === to[1]) {
      ink.beginPath();
      ink.arc(to[0], to[1], ink.lineWidth / 2, 0, 2 * Math.PI);
      ink.fill();
    } else {
      ink.beginPath();
      ink.moveTo(from[0], from[1]);
      ink.lineTo(to[0], to[1]);
      ink.stroke();
    }
    schedule();
  }

  pad.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    last = point(e);
    stroke(last, last);
  });
  pad.addEventListener("pointermove", (e) => {
    if (last === null) return;
    e.preventDefault();
    const p = point(e);
    stroke(last, p);
    last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => { last = null; });

  function schedule() {
    if (!pending) { pending = true; requestAnimationFrame(update); }
  }

  // ------------------------------------------------------------ showing the result
  const bars = document.getElementById("bars");
  // the name column as wide as the longest class name ("T-shirt/top" for Fashion-MNIST)
  bars.style.setProperty("--name-width", Math.max(2, ...MODEL.class_names.map((n) => n.length)) + 1 + "ch");
  const rows = MODEL.class_names.map((name) => {
    const li = document.createElement("li");
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    li.querySelector(".name").textContent = name;
    bars.appendChild(li);
    return li;
  });

  function showDigit(digit) {
    const view = document.getElementById("digit").getContext("2d"), image = view.createImageData(P.FIELD, P.FIELD);
    for (let i = 0; i < P.FIELD * P.FIELD; i++) {
      const v = digit ? digit[i] : 0;
      image.data.set([v, v, v, 255], 4 * i);
    }
    view.putImageData(image, 0, 0);
  }

  function showProbabilities(probabilities) {
    const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
    rows.forEach((li, k) => {
      const p = probabilities ? probabilities[k] : 0;
      li.classList.toggle("top", k === best);
      li.querySelector(".fill").style.width = (100 * p).toFixed(2) + "%";
      li.querySelector(".value").textContent = probabilities ? (100 * p).toFixed(1) + "%" : "";
    });
    document.getElementById("predicted").textContent = best >= 0 ? MODEL.class_names[best] : "?";
    document.getElementById("confidence").textContent = best >= 0
      ? `${(100 * probabilities[best]).toFixed(1)}% sure` : "Draw a digit in the black box";
  }

  // Diverging colours, blue < 0 < red, white at 0; |v| = limit is the full colour.
  function colour(v, limit) {
    const t = limit > 0 ? Math.min(Math.abs(v) / limit, 1) : 0;
    const [r, g, b] = v < 0 ? [33, 102, 172] : [178, 24, 43];
    return [255 + (r - 255) * t, 255 + (g - 255) * t, 255 + (b - 255) * t];
  }

  function paint(canvas, values, h, w, limit) {
    const c = canvas.getContext("2d"), image = c.createImageData(w, h);
    for (let i = 0; i < h * w; i++) image.data.set([...colour(values[i], limit), 255], 4 * i);
    c.putImageData(image, 0, 0);
  }

  const mapsBox = document.getElementById("maps");
  const MAP_LAYERS = MODEL.layers.filter((L) => MAP_KINDS.includes(L.kind));
  const layerViews = MAP_LAYERS.map((L) => {
    const [C, H, W] = L.out_shape, section = document.createElement("div");
    section.className = "layer";
    const strip = H * W === 1; // a convolution to single values, like LeNet-5's C5
    section.innerHTML = `<h3></h3><div class="tiles"></div>`;
    section.querySelector("h3").innerHTML = `${L.label} <span>${C} maps of ${H}x${W}${strip ? ", as one strip" : ""}</span>`;
    const tiles = section.querySelector(".tiles"), canvases = [];
    // tiles of about 52 CSS pixels (16 to a row), 40 for layers of more maps; whole pixels per value
    const scale = Math.max(1, Math.round((C > 16 ? 40 : 52) / Math.max(H, W)));
    for (let c = 0; c < (strip ? 1 : C); c++) {
      const canvas = document.createElement("canvas");
      canvas.width = strip ? C : W;
      canvas.height = strip ? 1 : H;
      if (strip) canvas.className = "strip";
      else { canvas.style.width = W * scale + "px"; canvas.style.height = H * scale + "px"; }
      canvas.title = strip ? `${C} values` : `map ${c}`;
      tiles.appendChild(canvas);
      canvases.push(canvas);
    }
    mapsBox.appendChild(section);
    return { strip, canvases };
  });

  function showMapsOf(maps) {
    mapsBox.hidden = !showMaps.checked;
    if (!showMaps.checked) return;
    maps.forEach((m, index) => {
      const [C, H, W] = m.shape, view = layerViews[index];
      let limit = 0;
      for (const v of m.data) limit = Math.max(limit, Math.abs(v));
      if (view.strip) paint(view.canvases[0], m.data, 1, C, limit);
      else view.canvases.forEach((canvas, c) => paint(canvas, m.data.subarray(c * H * W, (c + 1) * H * W), H, W, limit));
    });
  }

  function emptyMaps() {
    return MAP_LAYERS.map((L) => ({ shape: L.out_shape, data: new Float64Array(L.out_shape.reduce((a, b) => a * b, 1)) }));
  }

  function update() {
    pending = false;
    const rgba = ink.getImageData(0, 0, pad.width, pad.height).data;
    const digit = digitFromCanvas(rgba, pad.height, pad.width);
    if (digit === null) {
      result = { digit: null, input: null, logits: null, probabilities: null, predicted: null };
      showDigit(null);
      showProbabilities(null);
      showMapsOf(emptyMaps());
    } else {
      const input = preprocess(digit), out = forward(input);
      const predicted = out.probabilities.indexOf(Math.max(...out.probabilities));
      result = { digit: Array.from(digit), input: Array.from(input), logits: out.logits, probabilities: out.probabilities, predicted };
      showDigit(digit);
      showProbabilities(out.probabilities);
      showMapsOf(out.maps);
    }
    const done = waiters;
    waiters = [];
    done.forEach((resolve) => resolve(result));
  }

  function clear() {
    blank();
    last = null;
    schedule();
  }

  function reset() {
    penInput.value = DEFAULTS.pen;
    showMaps.checked = DEFAULTS.showMaps;
    showPen();
    clear();
  }

  function showPen() { document.getElementById("pen-value").textContent = penInput.value + " px"; }

  document.getElementById("clear").addEventListener("click", clear);
  document.getElementById("reset").addEventListener("click", reset);
  penInput.addEventListener("input", showPen);
  showMaps.addEventListener("change", schedule);

  const accuracy = MODEL.test_accuracy == null ? "" : `, ${(100 * MODEL.test_accuracy).toFixed(2)}% test accuracy`;
  document.getElementById("about").textContent =
    `Model ${MODEL.name} (${MODEL.parameters.toLocaleString("en")} parameters, trained on ${MODEL.dataset || "its data"}${accuracy}). ` +
    "Draw one digit with the mouse, a pen or a finger; the prediction follows every stroke.";
  blank();
  penInput.value = DEFAULTS.pen;
  showMaps.checked = DEFAULTS.showMaps;
  showPen();
  showProbabilities(null);
  showDigit(null);
  showMapsOf(emptyMaps());

  // For scripts and tests: the last result, the canvas as a PNG data URL, and a promise of the
  // result once the strokes drawn so far have been processed.
  window.fastlenetDemo = {
    model: { name: MODEL.name, class_names: MODEL.class_names },
    result: () => result,
    pixels: () => pad.toDataURL("image/png"), // lossless: the canvas is opaque
    settled: () => (pending ? new Promise((resolve) => waiters.push(resolve)) : Promise.resolve(result)),
    clear,
    reset,
  };
})();
