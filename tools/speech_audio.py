"""Make the speech audio of the voice-activity tests: ``models/data/speech_16k.npz``.

Spoken sentences synthesized by ``espeak-ng`` (Debian package ``espeak-ng``; English, German, French
and Spanish voices, male and female variants, several speeds), resampled from espeak's 22,050 Hz to
16 kHz, separated by silences of 0.2 to 1.5 s, over background noise (white and brown noise, a mains
hum, at 0 to 25 dB below the speech), seed 0.  Two recordings, holding the sentences that fit:
``calibration`` (10 s, two sentences) and ``test`` (16 s, three others), int16 at 16 kHz, with
``speech`` masks (1 where a sentence was placed: what was said, not what a detector says) beside them.

The file is committed so the tests do not depend on espeak-ng's version; rerun this script only to
change the recordings: ``python tools/speech_audio.py`` (needs ``apt-get install espeak-ng``).
"""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import numpy as np

RATE = 16_000
OUT = Path(__file__).resolve().parents[1] / "models" / "data" / "speech_16k.npz"
SENTENCES = {
    "en-us": ["The integer accelerator runs every layer with eight bit codes.",
              "Please leave the package at the front desk before noon.",
              "Turn left at the station and walk two blocks north.",
              "Seven hundred and twelve people answered the survey."],
    "en-gb": ["The weather will be cloudy with a chance of rain this evening.",
              "Could you read the last number back to me, please?",
              "The train to Edinburgh departs from platform nine."],
    "de": ["Der Zug nach Berlin fährt heute eine Stunde später ab.",
           "Bitte schließen Sie die Tür, wenn Sie den Raum verlassen."],
    "fr": ["Le rendez-vous est fixé à trois heures et quart demain.",
           "Nous avons mesuré la température chaque matin pendant un mois."],
    "es": ["La reunión empieza a las nueve en la sala pequeña.",
           "El mercado abre todos los días excepto el domingo."],
}
VARIANTS = ("", "+f3", "+m3", "+f2")


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, float32 in [-1, 1] at :data:`RATE`."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, samples = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return resample(samples.astype(np.float64) / 32768, rate, RATE)


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Band-limited resampling by the FFT (the spectrum cut or padded at the new Nyquist frequency)."""
    n = int(round(len(x) * to / rate))
    spectrum = np.fft.rfft(x)[: n // 2 + 1]
    return (np.fft.irfft(spectrum, n) * n / len(x)).astype(np.float32)


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Background noise of unit RMS: white, brown (integrated white) and a 50 Hz hum, mixed at random."""
    white = rng.standard_normal(n)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")
    hum = np.sin(2 * np.pi * 50 * np.arange(n) / RATE + rng.uniform(0, 2 * np.pi))
    mix = sum(w * s / np.sqrt(np.mean(s ** 2)) for w, s in zip(rng.dirichlet((1, 1, 0.5)), (white, brown, hum)))
    return mix / np.sqrt(np.mean(mix ** 2))


def recording(rng: np.random.Generator, seconds: float, utterances: list[tuple[str, str]]):
    """Sentences with silences between them over noise, int16, and the mask of where a sentence is."""
    total = int(seconds * RATE)
    clean, mask = np.zeros(total, np.float32), np.zeros(total, np.uint8)
    at = int(rng.uniform(0.2, 0.8) * RATE)
    for voice, text in utterances:
        speech = speak(text, voice + str(rng.choice(VARIANTS)), int(rng.integers(140, 200)))
        speech = speech * rng.uniform(0.3, 0.9) / max(np.abs(speech).max(), 1e-9)
        if at + len(speech) > total:
            break
        clean[at:at + len(speech)] = speech
        mask[at:at + len(speech)] = 1
        at += len(speech) + int(rng.uniform(0.2, 1.5) * RATE)
    level = np.sqrt(np.mean(clean[mask == 1] ** 2))
    audio = clean + noise(rng, total) * level * 10 ** (-rng.uniform(0, 25) / 20)
    audio *= 0.9 / max(np.abs(audio).max(), 1e-9)
    return np.round(audio * 32767).astype(np.int16), mask


def main() -> None:
    rng = np.random.default_rng(0)
    utterances = [(voice, text) for voice, texts in SENTENCES.items() for text in texts]
    order = rng.permutation(len(utterances))
    chosen = [utterances[i] for i in order]
    calibration, calibration_mask = recording(rng, 10, chosen[:3])
    test, test_mask = recording(rng, 16, chosen[3:])
    np.savez_compressed(OUT, calibration=calibration, calibration_speech=calibration_mask, test=test,
                        test_speech=test_mask, rate=np.int64(RATE))
    print(f"{OUT}: {OUT.stat().st_size} bytes; speech {calibration_mask.mean():.0%} / {test_mask.mean():.0%}")


if __name__ == "__main__":
    main()
