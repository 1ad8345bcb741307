"""The standard FID Inception through torch-fidelity (invdiff.perceptual.FidInception) from a local
file: loading (safely, strictly), the missing-file message, and FID / KID / IS equal to
torch-fidelity's own statistics of the same features. The real weights cannot be downloaded here,
so the file is a stand-in with the network's keys and random values."""

from __future__ import annotations

import pytest
import torch

tf = pytest.importorskip("torch_fidelity")

from invdiff import perceptual as P  # noqa: E402


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from torch_fidelity import feature_extractor_inceptionv3 as M

    orig = M.FeatureExtractorInceptionV3.load_state_dict
    M.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None  # build without weights
    try:
        mp = pytest.MonkeyPatch()
        mp.setattr(M, "load_state_dict_from_url", lambda *a, **k: {})
        torch.manual_seed(0)
        net = M.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
        mp.undo()
    finally:
        M.FeatureExtractorInceptionV3.load_state_dict = orig
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_missing_file_names_the_standard_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the standard FID Inception weights not found: .*"
                                                 r"pt_inception-2015-12-05-6726825d\.pth.*never\s+downloads"):
        P.load_perceptual(fid_inception=tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="not both"):
        P.load_perceptual(fid_inception=tmp_path / "a.pth", inception=tmp_path / "b.pth")


def test_wrong_keys_and_pickles_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        P.FidInception.from_file(bad)


def test_features_and_statistics_match_torch_fidelity(standin):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric

    net = P.FidInception.from_file(standin)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 1, 40, 40, generator=g)
    b = (a + 0.2 * torch.rand(4, 1, 40, 40, generator=g)).clamp(0, 1)
    pa, la = net.features(a, batch_size=3)
    pb, _ = net.features(b)
    assert pa.shape == (4, 2048) and la.shape == (4, 1008) and pa.dtype == torch.float64
    # the same features straight from torch-fidelity's extractor on the 8-bit images
    u8 = (a.repeat(1, 3, 1, 1) * 255).round().to(torch.uint8)
    with torch.no_grad():
        ref_pool, _ = net.net(u8)
    torch.testing.assert_close(pa, ref_pool.double(), rtol=1e-5, atol=1e-5)
    out = {"fid": P.fid_from_features(pb, pa)}
    fid = fid_statistics_to_metric(fid_features_to_statistics(pb.float()), fid_features_to_statistics(pa.float()),
                                   verbose=False)["frechet_inception_distance"]
    assert out["fid"] == pytest.approx(fid, rel=1e-3, abs=1e-6)
    assert P.fid_from_features(pa, pa) == pytest.approx(0.0, abs=1e-6)
    kid, _ = P.kid_from_features(pb, pa, subset_size=4)
    from torch_fidelity.metric_kid import kid_features_to_metric

    ref = kid_features_to_metric(pb.float(), pa.float(), kid_subsets=100, kid_subset_size=4, kid_degree=3,
                                 kid_gamma=None, kid_coef0=1, rng_seed=2020, verbose=False)
    assert kid == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)
    isc = isc_features_to_metric(la.float(), splits=2, shuffle=False)["inception_score_mean"]
    assert P.inception_score(la, 2)[0] == pytest.approx(isc, rel=1e-4)
