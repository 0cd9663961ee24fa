from django.urls import path

from sync import oauth, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    # Google OAuth web flow; "google-connect" with an account id reconnects that account.
    path("google/connect/", oauth.google_connect, name="google-connect"),
    path("google/connect/<int:account_id>/", oauth.google_connect, name="google-connect"),
    path("google/callback/", oauth.google_callback, name="google-callback"),
]
