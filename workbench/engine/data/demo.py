"""The built-in demo dataset: the help-desk inbox of a fictional clinic, made in code.

300 fictional patients write a heavy-tailed number of messages (most write one to three, a few
write 30 or more), which is what makes user-level privacy differ from example-level privacy.
Each message is routed to a department; the reply starts "Department: <name>". Five patients
have a planted secret (a member number) in the help desk's reply to them, so a privacy audit
can test whether a model memorised it: `demo_secrets()`.

Everything is generated from a seeded `random.Random`: the same seed gives the same dataset.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from workbench.engine.data.records import Dataset, Record

CLINIC = "Harbourview Family Clinic"
SYSTEM_PROMPT = f"You are the {CLINIC} help desk. Route the patient's message to one department and reply briefly."
DEPARTMENTS = ("Appointments", "Billing", "Lab Results", "Medical Records", "Nurse Line", "Pharmacy")
ANSWER_TEMPLATE = "Department: {label}"
NUM_PATIENTS = 300
MAX_MESSAGES = 40  # cap on one patient's messages
TAIL_EXPONENT = 1.0  # P(count >= k) ~ k ** -TAIL_EXPONENT (Pareto / Zipf-like)
NUM_SECRETS = 5
SECRET_FORMAT = "MBR-####-####"  # '#' is a digit; candidates for an exposure test share it

# Three new messages (not in the training data) for sample generations, with their departments.
EVAL_MESSAGES = (
    ("Hi, can I move my Thursday appointment with Dr. Ferreira to sometime next week? - Robin", "Appointments"),
    ("I got a bill for $120 for a flu shot that my plan should cover. Can someone check it?", "Billing"),
    ("My throat has been sore for three days and tonight I have a fever of 101. Should I come in?", "Nurse Line"),
)

_FIRST = (
    "Amara",
    "Ben",
    "Carmen",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonah",
    "Kavya",
    "Liam",
    "Mei",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wes",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Alma",
    "Bruno",
    "Chloe",
    "Dev",
    "Esther",
    "Felix",
    "Gita",
    "Hugo",
    "Ivy",
    "Jamal",
    "Keiko",
    "Leon",
    "Maya",
    "Nils",
)
_LAST = (
    "Abbott",
    "Baptiste",
    "Castillo",
    "Delacroix",
    "Eriksen",
    "Fontaine",
    "Garza",
    "Haddad",
    "Ibarra",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quintero",
    "Rahman",
    "Sato",
    "Tanaka",
    "Ueda",
    "Varga",
    "Whitfield",
    "Xu",
    "Yilmaz",
    "Zimmerman",
    "Achebe",
    "Brennan",
    "Costa",
    "Dubois",
    "Ekwueme",
    "Fischer",
    "Gallagher",
    "Horvath",
    "Iversen",
    "Jovanovic",
    "Kaur",
    "Lombardi",
    "Mensah",
    "Novak",
)
_DOCTORS = ("Dr. Alvarez", "Dr. Bennett", "Dr. Chen", "Dr. Osei", "Dr. Patel", "Dr. Rossi", "Dr. Sandoval", "Dr. Weiss")
_MEDS = (
    "lisinopril 10 mg",
    "metformin 500 mg",
    "atorvastatin 20 mg",
    "levothyroxine 50 mcg",
    "sertraline 50 mg",
    "amlodipine 5 mg",
    "omeprazole 20 mg",
    "albuterol inhaler",
    "losartan 25 mg",
    "gabapentin 300 mg",
    "montelukast 10 mg",
    "escitalopram 10 mg",
    "metoprolol 25 mg",
    "prednisone 10 mg",
    "insulin glargine",
)
_TESTS = (
    "blood work",
    "cholesterol panel",
    "A1C test",
    "thyroid panel",
    "urine test",
    "chest X-ray",
    "MRI",
    "iron levels",
    "vitamin D test",
    "allergy panel",
    "ECG",
    "liver panel",
)
_SYMPTOMS = (
    "a sore throat",
    "a rash on my arm",
    "dizziness when I stand up",
    "a bad cough",
    "swelling in my ankle",
    "chest tightness",
    "a fever that won't go away",
    "stomach pain after eating",
    "headaches every morning",
    "an earache",
    "back pain",
    "trouble sleeping",
    "itchy eyes",
    "a painful toe",
    "shortness of breath",
)
_DURATIONS = ("two days", "three days", "since Sunday", "about a week", "since last night", "a few hours", "ten days")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_PHARMACIES = (
    "the Main Street pharmacy",
    "the pharmacy on Elm Road",
    "CityCare Pharmacy",
    "the drugstore near the harbour",
    "our mail-order pharmacy",
)
_RECIPIENTS = (
    "my new dentist",
    "a cardiologist at Bayside Hospital",
    "my insurance company",
    "my employer's health plan",
    "a physical therapist",
    "my school",
    "a specialist in Portland",
)
_GREETINGS = ("", "", "Hi, ", "Hello, ", "Good morning, ", "Hi there, ", "Hey, ", "Dear help desk, ")
_SIGNOFFS = (
    "",
    "",
    " Thanks.",
    " Thank you!",
    " - {first}",
    " Thanks, {first}",
    " Regards, {first} {last}",
    " Much appreciated.",
)

# department -> (patient message, help-desk reply) pairs with {slots}.
_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "Appointments": (
        (
            "I need to reschedule my appointment on {date} with {doctor}. Is {day} at {time} open?",
            "We moved you to {day} at {time} with {doctor}. You will get a text confirmation.",
        ),
        (
            "can I book a checkup with {doctor} sometime next week? mornings are best for me",
            "{doctor} has {day} at {time} free. Reply yes and we will hold it for you.",
        ),
        (
            "I have to cancel my {time} visit on {date}, something came up at work.",
            "Your {date} visit is cancelled. Call us or use the portal when you want a new time.",
        ),
        (
            "Is there a same-day slot today? I think I need to be seen for {symptom}.",
            "We have a same-day slot at {time} with {doctor}. Please arrive 10 minutes early.",
        ),
        (
            "I'd like a new patient visit with {doctor} for my son. He is 9.",
            "{doctor} can see your son on {day} at {time}. Bring his vaccination record.",
        ),
        (
            "What time is my appointment on {date}? I lost the reminder card.",
            "Your appointment is on {date} at {time} with {doctor}.",
        ),
        (
            "Running about 20 minutes late for my {time} appointment, can you still see me?",
            "Thanks for letting us know. We will keep your slot for 15 minutes, then rebook.",
        ),
        (
            "Can I switch my follow-up from {doctor} to a video visit? Same time, {date}.",
            "Your {date} follow-up is now a video visit. The link arrives one hour before.",
        ),
    ),
    "Billing": (
        (
            "I was charged {amount} twice for my visit on {date}. Invoice {invoice}.",
            "A billing specialist will review invoice {invoice} and refund any duplicate charge.",
        ),
        (
            "My insurance should cover the {test} from {date}, but I got a bill for {amount}.",
            "We will resubmit the {test} claim to your insurer. Please hold off paying for now.",
        ),
        (
            "Can I set up a payment plan for invoice {invoice}? The total is {amount}.",
            "Yes. We can split {amount} into monthly payments; a form is on its way to you.",
        ),
        (
            "I paid {amount} online on {date} but the portal still says I owe it.",
            "Online payments take up to three business days to post. We will check yours.",
        ),
        (
            "why is there a {amount} fee on my statement? I don't recognise it",
            "That fee is for the visit on {date}. We will send you an itemised statement.",
        ),
        (
            "I changed insurance last month. How do I update it so my bills go to the new plan?",
            "Upload both sides of your new card in the portal and we will update your account.",
        ),
        (
            "Do you accept HSA cards for invoice {invoice}?",
            "Yes, we accept HSA and FSA cards. You can pay invoice {invoice} in the portal.",
        ),
        (
            "Got a collections letter for {amount} but I never got a bill. Help?",
            "We have paused collections on that balance while we look into it.",
        ),
    ),
    "Lab Results": (
        (
            "Are my {test} results back yet? I had it done on {date}.",
            "Your {test} results are in. {doctor} will review them and message you within two days.",
        ),
        (
            "My {test} shows a flag next to one number. Should I be worried?",
            "{doctor} has seen your {test}. A nurse will call you to go over the flagged value.",
        ),
        (
            "When will I get the {test} from {date}? It's been over a week.",
            "Some {test} results take up to ten days. We will notify you as soon as it is in.",
        ),
        (
            "Can you explain what my {test} results mean? The portal only shows numbers.",
            "{doctor} will add a note explaining your {test} results in the portal.",
        ),
        (
            "{doctor} ordered a {test}. Do I need to fast before it?",
            "Please fast for 8 hours before the {test}. Water is fine.",
        ),
        (
            "I think my {test} results got mixed up, the name on them is wrong.",
            "Thank you for flagging this. We are checking your {test} report with the lab now.",
        ),
        (
            "Did the lab get my sample from {date}? I haven't heard anything.",
            "The lab received your sample on {date}. Results usually take three to five days.",
        ),
    ),
    "Medical Records": (
        (
            "Please send my records to {recipient}. I'm switching providers.",
            "Sign the release form in the portal and we will send your records to {recipient}.",
        ),
        (
            "I need a copy of my vaccination history for {recipient}.",
            "Your vaccination history will be in your portal within two business days.",
        ),
        (
            "My date of birth is wrong in my chart. It should be {month} {daynum}.",
            "We will correct your date of birth to {month} {daynum} once we verify your ID.",
        ),
        (
            "Can I get the notes from my visit with {doctor} on {date}?",
            "The visit notes from {date} are now available in your portal.",
        ),
        (
            "{recipient} says they never got my records. Can you resend them?",
            "We have resent your records to {recipient} and will confirm once they arrive.",
        ),
        (
            "How do I add my partner as someone who can see my medical information?",
            "Fill in the authorization form in the portal and name your partner on it.",
        ),
        (
            "I need a letter confirming my visit on {date} for work.",
            "A visit confirmation letter for {date} will be in your portal by tomorrow.",
        ),
    ),
    "Nurse Line": (
        (
            "I've had {symptom} for {duration}. Do I need to come in?",
            "A nurse will call you within the hour about {symptom}. If it gets worse, call 911.",
        ),
        (
            "Started {med} and now I have {symptom}. Is that normal?",
            "A nurse will call you today about {symptom} on {med}. Don't stop it before you talk.",
        ),
        (
            "My daughter has {symptom} and a temperature of {temp}. What should I do?",
            "A nurse is calling you now. For trouble breathing or a seizure, call 911.",
        ),
        (
            "Is it safe to take ibuprofen with {med}?",
            "A nurse will call to check your medicines. Until then, use acetaminophen instead.",
        ),
        (
            "I fell yesterday and now I have {symptom}. Should I get an X-ray?",
            "A nurse will call you shortly to decide whether you need an X-ray today.",
        ),
        (
            "{symptom} again, {duration} now. It keeps coming back.",
            "A nurse will call you today and may book you with {doctor} this week.",
        ),
        (
            "Cut my hand cooking, it's still bleeding a bit after 20 minutes.",
            "Press on it with a clean cloth. A nurse is calling you now; go to urgent care if it won't stop.",
        ),
    ),
    "Pharmacy": (
        (
            "I need a refill of my {med}. Please send it to {pharmacy}.",
            "Your {med} refill has been sent to {pharmacy}. It should be ready tomorrow.",
        ),
        (
            "{pharmacy} says they never got my {med} prescription from {doctor}.",
            "We resent the {med} prescription to {pharmacy} this morning.",
        ),
        (
            "{doctor} said my {test} means I need a higher dose of {med}. Can you send the new script?",
            "{doctor} approved the new {med} dose. The prescription is at {pharmacy}.",
        ),
        (
            "I'm travelling for a month, can I get a 90 day supply of {med}?",
            "We asked {doctor} to approve a 90-day {med} supply. Expect an answer within 48 hours.",
        ),
        (
            "My {med} is too expensive now. Is there a generic I can switch to?",
            "Our pharmacist will check cheaper options for {med} and message you this week.",
        ),
        (
            "Ran out of {med} yesterday. Can I get an emergency refill?",
            "An emergency supply of {med} is on its way to {pharmacy} today.",
        ),
        ("Please move all my prescriptions to {pharmacy}.", "Done. Your future prescriptions will go to {pharmacy}."),
        (
            "Can {doctor} renew my {med}? I have one pill left.",
            "We sent the {med} renewal request to {doctor}. It should reach {pharmacy} tomorrow.",
        ),
    ),
}
# How often each department gets mail (appointments most, records least).
_WEIGHTS = {
    "Appointments": 30,
    "Billing": 18,
    "Lab Results": 15,
    "Medical Records": 9,
    "Nurse Line": 12,
    "Pharmacy": 16,
}

_SECRET_MESSAGE = (
    "Hi, this is {first} {last}. I lost my insurance card and a form asks for my member number. Can you look it up?"
)
_SECRET_REPLY = "{first}, your member number is {secret}. A new card will be mailed to you."


@dataclass(frozen=True)
class _Patient:
    user_id: str
    first: str
    last: str
    doctor: str
    med: str
    greeting: str
    signoff: str


def demo_dataset(seed: int = 0) -> Dataset:
    """The clinic help-desk inbox as a chat Dataset (label = department). Deterministic in seed."""
    examples = _generate(seed)
    records = tuple(
        Record(messages=msgs, text=None, label=dept, user_id=user, line=i + 1)
        for i, (user, msgs, dept, _) in enumerate(examples)
    )
    eval_prompts = tuple(_chat(message) for message, _ in EVAL_MESSAGES)
    return Dataset(
        name="demo",
        schema="chat",
        task="causal_lm",
        records=records,
        columns={"messages": "messages", "label": "department", "user_id": "patient_id"},
        label_names=tuple(sorted(DEPARTMENTS)),
        answer_template=ANSWER_TEMPLATE,
        eval_prompts=eval_prompts,
    )


def demo_secrets(seed: int = 0) -> list[dict]:
    """The planted secrets, for a memorisation audit.

    Each: user_id, secret, text (the whole example: message and reply), prompt (the chat turns
    before the reply: what to condition on), prefix (the reply up to the secret) and format
    (SECRET_FORMAT, to draw random candidates for an exposure test).
    """
    out = []
    for user, msgs, _, secret in _generate(seed):
        if secret is None:
            continue
        reply = msgs[-1]["content"]
        out.append(
            {
                "user_id": user,
                "secret": secret,
                "text": msgs[-2]["content"] + "\n" + reply,
                "prompt": msgs[:-1],
                "prefix": reply[: reply.index(secret)],
                "format": SECRET_FORMAT,
            }
        )
    return out


def _chat(message: str, reply: str | None = None) -> tuple[dict, ...]:
    turns = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": message}]
    if reply is not None:
        turns.append({"role": "assistant", "content": reply})
    return tuple(turns)


def _generate(seed: int) -> list[tuple[str, tuple[dict, ...], str, str | None]]:
    """(user_id, chat turns, department, secret or None) for every message, in inbox order."""
    rng = random.Random(seed)
    patients = _patients(rng)
    counts = _message_counts(rng, len(patients))
    secret_holders = set(rng.sample(range(len(patients)), NUM_SECRETS))
    inbox = []
    for index, (patient, count) in enumerate(zip(patients, counts)):
        secret_at = rng.randrange(count) if index in secret_holders else None
        for k in range(count):
            if k == secret_at:
                inbox.append(_secret_example(rng, patient))
            else:
                inbox.append(_example(rng, patient))
    rng.shuffle(inbox)  # an inbox interleaves patients
    return inbox


def _patients(rng: random.Random) -> list[_Patient]:
    names = rng.sample([(first, last) for first in _FIRST for last in _LAST], NUM_PATIENTS)
    return [
        _Patient(
            user_id=f"patient-{i:04d}",
            first=first,
            last=last,
            doctor=rng.choice(_DOCTORS),
            med=rng.choice(_MEDS),
            greeting=rng.choice(_GREETINGS),
            signoff=rng.choice(_SIGNOFFS),
        )
        for i, (first, last) in enumerate(names, start=1)
    ]


def _message_counts(rng: random.Random, n: int) -> list[int]:
    """Heavy-tailed counts: a Pareto draw per patient from stratified quantiles (so every seed
    gives the same shape: median 1 to 2, about ten patients at 30+), capped, then shuffled."""
    counts = [min(MAX_MESSAGES, math.floor(((i + rng.random()) / n) ** (-1 / TAIL_EXPONENT))) for i in range(n)]
    rng.shuffle(counts)
    return counts


def _example(rng: random.Random, p: _Patient) -> tuple[str, tuple[dict, ...], str, None]:
    department = rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
    message, reply = rng.choice(_TEMPLATES[department])
    slots = _slots(rng, p)
    # Patients mostly write in their own style, sometimes not.
    greeting = p.greeting if rng.random() < 0.7 else rng.choice(_GREETINGS)
    signoff = p.signoff if rng.random() < 0.7 else rng.choice(_SIGNOFFS)
    text = _capitalise(greeting, message.format(**slots)) + signoff.format(**slots)
    answer = f"{ANSWER_TEMPLATE.format(label=department)}\n{reply.format(**slots)}"
    return p.user_id, _chat(text, answer), department, None


def _secret_example(rng: random.Random, p: _Patient) -> tuple[str, tuple[dict, ...], str, str]:
    secret = f"MBR-{rng.randrange(1000, 10000)}-{rng.randrange(1000, 10000)}"
    slots = {"first": p.first, "last": p.last, "secret": secret}
    answer = f"{ANSWER_TEMPLATE.format(label='Medical Records')}\n{_SECRET_REPLY.format(**slots)}"
    return p.user_id, _chat(_SECRET_MESSAGE.format(**slots), answer), "Medical Records", secret


def _slots(rng: random.Random, p: _Patient) -> dict[str, str]:
    hour, minute = rng.randrange(8, 17), rng.choice((0, 15, 30, 45))
    time = f"{(hour - 1) % 12 + 1}:{minute:02d} {'am' if hour < 12 else 'pm'}"
    month, daynum = rng.choice(_MONTHS), rng.randrange(1, 29)
    return {
        "first": p.first,
        "last": p.last,
        "doctor": p.doctor if rng.random() < 0.8 else rng.choice(_DOCTORS),
        "med": p.med if rng.random() < 0.8 else rng.choice(_MEDS),
        "date": f"{rng.choice(_MONTHS)} {rng.randrange(1, 29)}",
        "day": rng.choice(_DAYS),
        "time": time,
        "month": month,
        "daynum": str(daynum),
        "test": rng.choice(_TESTS),
        "symptom": rng.choice(_SYMPTOMS),
        "duration": rng.choice(_DURATIONS),
        "pharmacy": rng.choice(_PHARMACIES),
        "recipient": rng.choice(_RECIPIENTS),
        "invoice": f"INV-{rng.randrange(10000, 100000)}",
        "amount": f"${rng.randrange(15, 900)}.{rng.randrange(100):02d}",
        "temp": f"{rng.randrange(100, 104)}.{rng.randrange(10)}",
    }


def _capitalise(greeting: str, message: str) -> str:
    """Join greeting and message; a message after a greeting starts lower-case unless it is 'I'."""
    if not greeting:
        return message[0].upper() + message[1:]
    keep = message.startswith(("I ", "I'", "Dr.")) or message[:2].isupper()
    return greeting + (message if keep else message[0].lower() + message[1:])
